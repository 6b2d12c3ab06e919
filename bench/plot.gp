# Draws bench/results/latest.png from the data files bench.mjs leaves in bench/out/.
#   gnuplot -e "out='out'; png='results/latest.png'" plot.gp
if (!exists("out")) out = 'out'
if (!exists("png")) png = 'results/latest.png'
title = system("cat ".out."/title.txt")
load out."/vars.gp"   # has_aiortc, c1 (CPU with one viewer)
set terminal pngcairo size 1600,1000 font "DejaVu Sans,11" noenhanced
set output png
set multiplot layout 2,2 title title font ",13"
set grid
set key bottom right

# 1. latency CDF
set title "Glass-to-glass latency, 1 viewer, 1280x720@30 (CDF)"
set xlabel "latency (ms): Date.now() at rendered frame − timestamp code"
set ylabel "fraction of frames"
set yrange [0:1]
set xrange [0:*]
set arrow 1 from 35, graph 0 to 35, graph 1 nohead dt 2 lc rgb "#cc0000"
set label 1 "mark p50 ≤ 35 ms" at 36, graph 0.08 tc rgb "#cc0000"
plot out."/cdf_peercam.dat" using 1:2 with steps lw 2 lc rgb "#1f77b4" title "peercam", \
     out."/cdf_c2c.dat" using 1:2 with steps lw 2 lc rgb "#2ca02c" title "Chromium→Chromium", \
     (has_aiortc ? out."/cdf_aiortc.dat" : out."/cdf_peercam.dat") using 1:(has_aiortc ? $2 : NaN) with steps lw 2 lc rgb "#ff7f0e" title (has_aiortc ? "aiortc" : "")
unset arrow 1; unset label 1

# 2. latency over time
set title "Latency per rendered frame over the run"
set xlabel "time (s)"
set ylabel "ms"
set yrange [0:*]
set xrange [0:*]
set key top right
plot out."/series_peercam.dat" using 1:2 with lines lw 1 lc rgb "#1f77b4" title "peercam: code → rendered", \
     out."/series_peercam.dat" using 1:3 with lines lw 1 lc rgb "#9ecae1" title "peercam: code → frame received", \
     out."/series_c2c.dat" using 1:2 with lines lw 1 lc rgb "#2ca02c" title "Chromium→Chromium: code → rendered"

# 3. CPU and RSS by viewers
set title "peercam service CPU and RSS by viewers (Chromium decode not counted)"
set xlabel "viewers"
set ylabel "CPU, % of one core"
set y2label "RSS (MiB)"
set ytics nomirror
set y2tics
set xrange [-0.5:8.5]
set yrange [0:c1 * 2.2 + 10]
set y2range [0:*]
set key at graph 0.98, graph 0.11 right bottom box opaque
plot out."/cpu.dat" using 1:2 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "service CPU %", \
     out."/cpu.dat" using 1:2:(sprintf("%.1f", $2)) with labels offset 0,1 notitle, \
     (x >= 1 ? c1 + 3 * (x - 1) : 1/0) with lines dt 2 lc rgb "#cc0000" title "mark: CPU(1) + 3 %/extra viewer", \
     out."/cpu.dat" using 1:5 with linespoints lw 2 pt 9 lc rgb "#17becf" title "… without capture/encode/audio threads (fan-out)", \
     out."/cpu.dat" using 1:3 axes x1y2 with linespoints lw 2 pt 5 lc rgb "#9467bd" title "RSS MiB"
unset y2tics; unset y2label; set ytics mirror

# 4. first frame breakdown
set title "Offer → first rendered frame (median), by phase"
set style data histograms
set style histogram rowstacked
set style fill solid 0.85 border -1
set boxwidth 0.6
set xlabel ""
set ylabel "ms"
set xrange [*:*]
set yrange [0:ffmax * 1.45]
set key default
set key top left box opaque
set xtics rotate by -12
set arrow 2 from graph 0, first 300 to graph 1, first 300 nohead dt 2 lc rgb "#cc0000"
set label 2 "mark ≤ 300 ms" at graph 0.01, first 310 tc rgb "#cc0000"
plot out."/firstframe.dat" using 2:xtic(1) title "offer + ICE gathering (browser)" lc rgb "#c7c7c7", \
     '' using 3 title "offer → answer (server)" lc rgb "#ff7f0e", \
     '' using 4 title "answer → ICE + DTLS connected" lc rgb "#9467bd", \
     '' using 5 title "connected → first frame rendered" lc rgb "#1f77b4"
unset multiplot
