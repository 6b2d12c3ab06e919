# Draws bench/results/links.png from the data bench/links-report.mjs leaves in bench/out/links/:
# per scenario (and per viewer in the two-viewer test) the received bitrate (left axis) and the
# latency of every rendered frame (right axis, log scale) over time, peercam and Chromium→Chromium.
#   gnuplot -e "out='out/links'; png='results/links.png'" links.gp
if (!exists("out")) out = 'out/links'
if (!exists("png")) png = 'results/links.png'
load out.'/panels.gp'
rows = ceil(npanels / 2.0)
set terminal pngcairo size 1800,(480 * rows + 60) font "DejaVu Sans,10" noenhanced
set output png
set multiplot layout rows,2 title maintitle font ",13"
set grid
set key top right box opaque font ",9" maxrows 3
set xlabel 'time since the viewers connected (s)'
set ylabel 'received kbit/s (lines)'
set y2label 'latency of each rendered frame (ms, log; dots)'
set ytics nomirror
set y2tics
set yrange [0:4600]
set logscale y2
set y2range [3:30000]
set arrow 1 from graph 0, second 150 to graph 1, second 150 nohead dt 3 lc rgb '#cc0000'
set label 1 '150 ms' at graph 0.005, second 165 tc rgb '#cc0000' font ',8'
do for [i=1:npanels] {
  id = value(sprintf('id%d', i))
  set title value(sprintf('title%d', i))
  plot out.'/'.id.'_cap.dat' using 1:2 with lines dt 2 lw 2 lc rgb 'black' title 'cap', \
       out.'/'.id.'_peercam_rate.dat' using 1:2 with lines lw 2 lc rgb '#1f77b4' title 'peercam kbit/s', \
       out.'/'.id.'_c2c_rate.dat' using 1:2 with lines lw 2 lc rgb '#2ca02c' title 'Chromium→Chromium kbit/s', \
       out.'/'.id.'_peercam_lat.dat' using 1:2 axes x1y2 with points pt 7 ps 0.25 lc rgb '#ff7f0e' title 'peercam latency', \
       out.'/'.id.'_c2c_lat.dat' using 1:2 axes x1y2 with points pt 7 ps 0.25 lc rgb '#9467bd' title 'Chromium→Chromium latency'
}
unset multiplot
