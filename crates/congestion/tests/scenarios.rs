//! Closed-loop scenarios: the controller drives a simulated encoder + pacer over a simulated
//! bottleneck (see `sim`). Each asserts behaviour the product needs.

mod sim;

use congestion::State;
use sim::*;

fn mean(v: &[u64]) -> f64 {
    v.iter().sum::<u64>() as f64 / v.len() as f64
}

/// Converged: every sampled target within [0.7, 1.15] x C (AIMD probes slightly above the
/// capacity before each backoff), the mean within [0.75, 1.0] x C, and the bottleneck queue
/// low (p50 < 60 ms, p95 < 150 ms), no drops.
fn assert_converged(s: &Sim, cap: f64, from: i64, to: i64) {
    let t = s.targets_between(from, to);
    let tr = s.trace(0, to);
    assert!(t.iter().all(|&x| x as f64 >= 0.7 * cap && x as f64 <= 1.15 * cap), "targets out of range:\n{tr}");
    let m = mean(&t);
    assert!(m >= 0.75 * cap && m <= 1.0 * cap, "mean {m}:\n{tr}");
    let p50 = s.queue_delay_percentile(from, to, 50.0);
    let p95 = s.queue_delay_percentile(from, to, 95.0);
    assert!(p50 < 60 * MS && p95 < 150 * MS, "queue p50 {p50} µs p95 {p95} µs:\n{tr}");
    assert!(!s.queue_drops.iter().any(|&d| d >= from), "drops after convergence:\n{tr}");
}

#[test]
fn converges_to_1_mbit_from_below_with_a_short_queue() {
    let mut s = Sim::new(300_000, LinkParams::capped(1e6));
    s.run_until(20 * S);
    assert_converged(&s, 1e6, 10 * S, 20 * S);
    // the detector, not loss, did it
    assert!(s.samples.iter().any(|x| x.stats.overuse));
    assert!(s.samples.iter().all(|x| x.stats.loss_based_bps == 50_000_000));
}

#[test]
fn converges_to_500_kbit_from_a_start_above_it() {
    // The product starts at 1.5 Mbit/s: 3x this link. The queue it builds in the first
    // 100 ms fills most of the buffer; it must be drained, not left standing.
    let mut s = Sim::new(1_500_000, LinkParams::capped(5e5));
    s.run_until(20 * S);
    assert_converged(&s, 5e5, 10 * S, 20 * S);
    let drained = s.samples.iter().find(|x| x.t_us > S && x.queue_us < 50 * MS).map(|x| x.t_us);
    assert!(drained.is_some_and(|t| t < 2 * S), "queue drained at {drained:?}:\n{}", s.trace(0, 5 * S));
}

#[test]
fn converges_unpaced_with_jitter() {
    // Whole frames at once (no pacer) and 0-8 ms of receive jitter.
    let mut link = LinkParams::capped(1e6);
    link.jitter_us = 8 * MS;
    let mut s = Sim::new(300_000, link);
    s.paced = false;
    s.run_until(20 * S);
    assert_converged(&s, 1e6, 10 * S, 20 * S);
}

#[test]
fn fast_start_reaches_2_5_mbit_within_2_5_s() {
    let mut s = Sim::new(300_000, LinkParams::capped(20e6));
    s.run_until(3 * S);
    let t = s.first_time(0, |st| st.target_bps >= 2_500_000);
    assert!(t.is_some_and(|t| t <= 2_500 * MS), "reached at {t:?}:\n{}", s.trace(0, 3 * S));
    assert!(s.samples_between(0, t.unwrap()).all(|x| x.stats.state == State::Startup));
    // and it went on to use the link without a standing queue
    s.run_until(8 * S);
    assert!(s.cc.target_bps() >= 12_000_000, "{}", s.trace(0, 8 * S));
    assert!(s.queue_delay_percentile(5 * S, 8 * S, 50.0) < 30 * MS);
}

/// 4 Mbit/s, converged; then 800 kbit/s at 10 s; back to 4 Mbit/s at 20 s. The buffer holds
/// 300 ms at 4 Mbit/s (1.5 s at 800 kbit/s).
fn step_sim() -> Sim {
    let mut link = LinkParams::capped(4e6);
    link.buffer_bytes = (4e6 / 8.0 * 0.3) as usize;
    let mut s = Sim::new(1_500_000, link);
    s.run_until(10 * S);
    assert!(s.cc.target_bps() > 3_000_000, "{}", s.trace(0, 10 * S));
    s.link.capacity_bps = 8e5;
    s.run_until(20 * S);
    s.link.capacity_bps = 4e6;
    s.run_until(30 * S);
    s
}

#[test]
fn capacity_drop_is_detected_by_delay_and_recovered_from() {
    let s = step_sim();
    let tr = s.trace(9 * S, 30 * S);
    let overuse = s.first_time(10 * S, |st| st.overuse).expect("overuse");
    assert!(overuse <= 10 * S + 600 * MS, "overuse at {overuse}:\n{tr}");
    let below = s.first_time(10 * S, |st| st.target_bps < 800_000).expect("below the new capacity");
    assert!(below <= 11 * S, "below 800k at {below}:\n{tr}");
    // delay did it, before the buffer overflowed: no drops, no loss-based limit
    assert!(s.queue_drops.is_empty(), "drops at {:?}:\n{tr}", &s.queue_drops[..s.queue_drops.len().min(5)]);
    assert!(s.samples.iter().all(|x| x.stats.loss_based_bps == 50_000_000));
    // the queue it built is drained within ~3 s, and the rate settles near 800k
    assert!(s.samples_between(13 * S, 20 * S).all(|x| x.queue_us < 150 * MS), "{tr}");
    assert_converged(&s, 8e5, 15 * S, 20 * S);
    // back up: >= 2 Mbit/s within 10 s (8 %/s alone would take ~12 s from 800k)
    let up = s.first_time(20 * S, |st| st.target_bps >= 2_000_000);
    assert!(up.is_some_and(|t| t <= 29 * S), "2 Mbit/s at {up:?}:\n{tr}");
}

/// The links rig's step: a `tbf` whose queue holds 300 ms at whatever rate it has, so the step
/// from 4 Mbit/s to 800 kbit/s drops packets at once. The viewer's latency is back to normal
/// when a packet no longer waits more than ~150 ms in the pacer and the bottleneck together.
#[test]
fn rig_step_down_recovers_within_2_s_and_back_up_within_8_s() {
    let windowed = rig_step(true);
    let unwindowed = rig_step(false);
    let settle = |s: &Sim| s.settled_below(10 * S, 20 * S, 150 * MS).map_or(-1, |t| (t - 10 * S) / MS);
    let drops = |s: &Sim| s.queue_drops.iter().filter(|&&t| t >= 10 * S && t < 20 * S).count();
    eprintln!(
        "with the window: settled {} ms after the step, {} drops in the bottleneck, {} holds, {} dropped from the backlog; \
         without: {} ms, {} drops",
        settle(&windowed), drops(&windowed), windowed.window_holds, windowed.backlog_drops, settle(&unwindowed), drops(&unwindowed)
    );
    assert!(windowed.window_holds > 0);
    assert!(drops(&windowed) < drops(&unwindowed), "the window keeps packets out of the full queue");
}

fn rig_step(windowed: bool) -> Sim {
    let mut link = LinkParams::capped(4e6);
    link.buffer_bytes = (4e6 / 8.0 * 0.3) as usize;
    let mut s = Sim::new(1_500_000, link);
    s.windowed = windowed;
    s.run_until(10 * S);
    s.link.capacity_bps = 8e5;
    s.link.buffer_bytes = (8e5 / 8.0 * 0.3) as usize;
    s.run_until(20 * S);
    s.link.capacity_bps = 4e6;
    s.link.buffer_bytes = (4e6 / 8.0 * 0.3) as usize;
    s.run_until(30 * S);
    let tr = s.trace(9 * S, 30 * S);
    let settled = s.settled_below(10 * S, 20 * S, 150 * MS);
    eprintln!("settled {settled:?}\n{tr}");
    assert!(settled.is_some_and(|t| t <= 12 * S), "settled at {settled:?}:\n{tr}");
    // the drops were a queue overflowing: once loss is gone the delay signal is in charge again
    assert!(s.samples_between(14 * S, 30 * S).all(|x| x.stats.loss_based_bps == 50_000_000), "{tr}");
    let used = mean(&s.targets_between(14 * S, 20 * S));
    assert!(used >= 0.8 * 8e5, "mean target {used} at 800 kbit/s:\n{tr}");
    let up = s.first_time(20 * S, |st| st.target_bps >= 2_000_000);
    assert!(up.is_some_and(|t| t <= 28 * S), "2 Mbit/s at {up:?}:\n{tr}");
    s
}

#[test]
fn three_percent_random_loss_does_not_drag_the_rate_down() {
    let mut link = LinkParams::capped(10e6);
    link.loss = 0.03;
    let mut s = Sim::new(300_000, link);
    s.run_until(20 * S);
    let tr = s.trace(0, 20 * S);
    assert!(s.samples_between(5 * S, 20 * S).all(|x| x.stats.target_bps > 2_000_000), "{tr}");
    assert!(s.cc.target_bps() > 6_000_000, "{tr}");
    let loss = s.cc.stats().loss_fraction;
    assert!(loss > 0.01 && loss < 0.06, "measured loss {loss}");
}

#[test]
fn twenty_percent_loss_drives_the_rate_down() {
    let mut link = LinkParams::capped(10e6);
    link.loss = 0.20;
    let mut s = Sim::new(2_000_000, link);
    s.run_until(10 * S);
    let st = s.cc.stats();
    assert!(st.target_bps < 500_000, "{}", s.trace(0, 10 * S));
    assert!(st.loss_based_bps == st.target_bps && st.loss_based_bps < st.delay_based_bps);
    assert!((st.loss_fraction - 0.2).abs() < 0.08, "{}", st.loss_fraction);
    // loss gone: once the loss window has forgotten it, the ceiling lifts again (8 %/s)
    s.link.loss = 0.0;
    let before = s.cc.target_bps();
    s.run_until(20 * S);
    assert!(s.cc.stats().loss_fraction < 0.02);
    assert!(s.cc.target_bps() as f64 > before as f64 * 1.4, "{}", s.trace(10 * S, 20 * S));
}

#[test]
fn remb_caps_the_target() {
    let mut s = Sim::new(300_000, LinkParams::capped(20e6));
    s.remb = Some(1_000_000);
    s.run_until(6 * S);
    assert!(s.samples.iter().all(|x| x.stats.target_bps <= 1_000_000));
    assert!(s.cc.target_bps() == 1_000_000, "{}", s.trace(0, 6 * S));
    // the delay-based estimate did not run away above the cap meanwhile
    assert!(s.cc.stats().delay_based_bps <= 1_500_000);
    s.remb = Some(3_000_000);
    s.run_until(9 * S);
    assert_eq!(s.cc.target_bps(), 3_000_000, "{}", s.trace(6 * S, 9 * S));
}

#[test]
fn feedback_timeout_holds_then_halves_then_restarts() {
    let mut s = Sim::new(2_000_000, LinkParams::capped(5e6));
    s.run_until(8 * S);
    let t0 = s.cc.target_bps();
    s.feedback_enabled = false;
    s.run_until(10 * S);
    let tr = s.trace(7 * S, 10 * S);
    // no increase without feedback; on hold after 1 s
    assert!(s.samples_between(8 * S, 10 * S).all(|x| x.stats.target_bps <= t0), "{tr}");
    assert_eq!(s.cc.stats().state, State::Hold, "{tr}");
    assert_eq!(s.cc.target_bps(), t0, "{tr}");
    // halved after 3 s, and on down while silent, never below min
    s.run_until(11_200 * MS);
    assert!(s.cc.target_bps() <= t0 / 2 + 1, "{}", s.trace(7 * S, 12 * S));
    s.run_until(25 * S);
    assert_eq!(s.cc.target_bps(), 50_000);
    // feedback back: a fast start again
    s.feedback_enabled = true;
    s.run_until(28 * S);
    assert!(s.cc.target_bps() >= 1_000_000, "{}", s.trace(24 * S, 28 * S));
}

#[test]
fn application_limited_sender_still_raises_the_estimate_and_backs_off_from_acked() {
    let mut s = Sim::new(300_000, LinkParams::capped(10e6));
    s.app_limit_bps = Some(500_000.0);
    s.run_until(6 * S);
    let st = s.cc.stats();
    // not capped by what was acknowledged
    assert!(st.acked_bps < 700_000 && st.target_bps >= 3_000_000, "{}", s.trace(0, 6 * S));
    // the link drops to 400k: the backoff is relative to the ~500k actually sent, not to the
    // multi-megabit estimate
    s.link.capacity_bps = 4e5;
    s.link.buffer_bytes = 100_000;
    s.run_until(9 * S);
    let tr = s.trace(5 * S, 9 * S);
    let below = s.first_time(6 * S, |st| st.target_bps <= 450_000);
    assert!(below.is_some_and(|t| t < 7 * S + 500 * MS), "{tr}");
}

#[test]
fn pacing_rate_is_a_multiple_of_the_target() {
    let mut s = Sim::new(1_000_000, LinkParams::capped(3e6));
    s.run_until(5 * S);
    for x in &s.samples {
        let expected = x.stats.target_bps as f64 * congestion::PACING_FACTOR;
        assert!((x.pacing_bps as f64 - expected).abs() <= 3.0, "{} vs {expected}", x.pacing_bps);
    }
}

#[test]
fn sequence_numbers_wrap_many_times() {
    // Small packets so that the 16-bit transport sequence (starting at 65000) wraps at least
    // twice; the estimate and the measurements stay sane throughout.
    let mut s = Sim::new(5_000_000, LinkParams::capped(20e6));
    s.max_payload = 300;
    s.run_until(12 * S);
    assert!(s.sent_packets > 70_000, "{}", s.sent_packets);
    let st = s.cc.stats();
    assert!(st.target_bps > 12_000_000, "{}", s.trace(0, 15 * S));
    assert!(st.acked_bps > 8_000_000 && st.loss_fraction == 0.0 && st.rtt.is_some());
    assert!(s.cc.history_len() <= 10_000);
}

#[test]
fn converges_with_200_ms_rtt_and_100_ms_feedback() {
    let mut link = LinkParams::capped(2e6);
    link.one_way_delay_us = 100 * MS;
    let mut s = Sim::new(1_500_000, link);
    s.feedback_interval_us = 100 * MS;
    s.run_until(25 * S);
    assert_converged(&s, 2e6, 10 * S, 25 * S);
}

#[test]
fn saturated_high_rate_link_overuse_is_seen_early() {
    // Starting right at a 20 Mbit/s link's capacity: the queue is back-to-back from the
    // start, which libwebrtc's 100 ms burst merging would turn into few, long groups (and a
    // late detection with a ~400 ms queue).
    let mut link = LinkParams::capped(20e6);
    link.one_way_delay_us = 10 * MS;
    let mut s = Sim::new(20_000_000, link);
    s.run_until(10 * S);
    let worst = s.samples.iter().map(|x| x.queue_us).max().unwrap();
    assert!(worst < 200 * MS, "queue reached {worst} µs:\n{}", s.trace(0, 10 * S));
    assert_converged(&s, 20e6, 5 * S, 10 * S);
}
