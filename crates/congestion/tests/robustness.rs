//! Hostile and odd inputs, fallbacks without transport-cc, and bounds.

mod sim;

use congestion::{Config, Controller, State};
use sim::Rng;
use std::time::{Duration, Instant};

const CFG: Config = Config { start_bps: 1_000_000, min_bps: 100_000, max_bps: 10_000_000 };

fn ms(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

fn assert_sane(cc: &Controller, cfg: Config) {
    let st = cc.stats();
    assert!((cfg.min_bps..=cfg.max_bps).contains(&cc.target_bps()), "{st:?}");
    assert!(cc.pacing_bps() >= cc.target_bps());
    assert!(st.trend.is_finite() && st.modified_trend.is_finite() && st.threshold.is_finite(), "{st:?}");
    assert!((0.0..=1.0).contains(&st.loss_fraction), "{st:?}");
    assert!(cc.history_len() <= 10_000);
}

#[test]
fn garbage_feedback_never_panics() {
    let t0 = Instant::now();
    let mut cc = Controller::new(CFG, t0);
    let mut rng = Rng::new(42);
    let mut seq: u16 = 65_000;
    let mut now = 0u64;
    let weird = [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX, 1 << 62, -(1 << 62)];
    for round in 0..3_000 {
        // time mostly advances, sometimes stands still or goes backwards
        now = match rng.next_u64() % 10 {
            0 => now.saturating_sub(rng.next_u64() % 5_000),
            1 => now,
            _ => now + rng.next_u64() % 40,
        };
        let at = ms(t0, now);
        for _ in 0..rng.next_u64() % 20 {
            let size = match rng.next_u64() % 50 {
                0 => usize::MAX,
                1 => 0,
                _ => 1200,
            };
            cc.on_packet_sent(seq, size, at);
            seq = match rng.next_u64() % 200 {
                0 => seq.wrapping_sub(rng.next_u64() as u16 % 3_000), // restarts, reorders
                1 => seq,                                             // duplicate
                _ => seq.wrapping_add(1),
            };
        }
        let n = match rng.next_u64() % 500 {
            0 => 65_536,
            1..=5 => 0,
            _ => (rng.next_u64() % 60) as usize,
        };
        let base = seq.wrapping_sub((rng.next_u64() % 400) as u16);
        let fb: Vec<(u16, Option<i64>)> = (0..n)
            .map(|i| {
                let s = match rng.next_u64() % 20 {
                    0 => rng.next_u64() as u16, // unknown / stale
                    1 => base,                  // duplicate within the feedback
                    _ => base.wrapping_add(i as u16),
                };
                let a = match rng.next_u64() % 12 {
                    0 => None,
                    1 => Some(weird[(rng.next_u64() % weird.len() as u64) as usize]),
                    2 => Some(rng.next_u64() as i64),
                    _ => Some(now as i64 * 1000 + (rng.next_u64() % 50_000) as i64 - 7_000_000_000),
                };
                (s, a)
            })
            .collect();
        cc.on_transport_feedback(&fb, at);
        if round % 7 == 0 {
            cc.on_transport_feedback(&fb, at); // the same again
        }
        match rng.next_u64() % 30 {
            0 => cc.on_remb(rng.next_u64() >> (rng.next_u64() % 64), at),
            1 => cc.on_remb(0, at),
            2 => cc.on_receiver_report(rng.next_u64() as u8, Some(Duration::from_micros(rng.next_u64() >> 20)), at),
            3 => cc.on_receiver_report(255, Some(Duration::MAX), at),
            _ => {}
        }
        cc.handle_timeout(at);
        assert_sane(&cc, CFG);
    }
}

#[test]
fn absurd_configs_are_fixed_up() {
    let t0 = Instant::now();
    for cfg in [
        Config { start_bps: 0, min_bps: 0, max_bps: 0 },
        Config { start_bps: 5, min_bps: 10, max_bps: 1 },
        Config { start_bps: u64::MAX, min_bps: u64::MAX, max_bps: u64::MAX },
        Config { start_bps: u64::MAX, min_bps: 0, max_bps: u64::MAX },
    ] {
        let mut cc = Controller::new(cfg, t0);
        cc.on_packet_sent(1, 1200, t0);
        cc.on_transport_feedback(&[(1, Some(0))], ms(t0, 50));
        cc.on_remb(u64::MAX, ms(t0, 60));
        cc.handle_timeout(ms(t0, 10_000));
        let t = cc.target_bps();
        assert!(t >= 1, "{cfg:?}: {t}");
        let _ = cc.stats();
    }
    // an instant before the controller's creation is treated as its creation
    let mut cc = Controller::new(CFG, ms(t0, 1_000));
    cc.on_packet_sent(1, 1200, t0);
    cc.handle_timeout(t0);
    assert_eq!(cc.target_bps(), CFG.start_bps);
}

#[test]
fn history_stays_bounded_without_feedback() {
    let t0 = Instant::now();
    let mut cc = Controller::new(CFG, t0);
    // 1e6 packets over 100 s (10 000 packets/s), timers every 50 ms, no feedback at all
    for i in 0..1_000_000u64 {
        let at = t0 + Duration::from_micros(i * 100);
        cc.on_packet_sent(i as u16, 1200, at);
        if i % 500 == 0 {
            cc.handle_timeout(at);
        }
        assert!(cc.history_len() <= 10_000);
    }
    assert!(cc.history_len() >= 9_000, "keeps what it may");
    // and the silence drove the rate to the floor
    assert_eq!(cc.target_bps(), CFG.min_bps);
}

#[test]
fn duplicate_and_stale_feedback_changes_nothing() {
    let t0 = Instant::now();
    let mut cc = Controller::new(CFG, t0);
    // 300 packets over 3 s, every 10th lost, reported every 100 ms
    let mut fb = vec![];
    let mut feedbacks = vec![];
    for i in 0..300u64 {
        let s = (65_400 + i) as u16; // wraps at 136
        cc.on_packet_sent(s, 1200, ms(t0, i * 10));
        fb.push((s, if i % 10 == 3 { None } else { Some(-5_000_000 + i as i64 * 10_000 + 20_000) }));
        if i % 10 == 9 {
            let f = std::mem::take(&mut fb);
            cc.on_transport_feedback(&f, ms(t0, i * 10 + 40));
            feedbacks.push(f);
        }
    }
    let st = cc.stats();
    assert!((st.loss_fraction - 0.1).abs() < 1e-9, "{st:?}");
    assert!(st.rtt.is_some_and(|r| r >= Duration::from_millis(30) && r <= Duration::from_millis(41)), "{st:?}");
    assert!(st.acked_bps > 800_000 && st.acked_bps < 1_000_000, "{st:?}");
    // everything again, a second later, including the wrap: ignored
    for (i, f) in feedbacks.iter().enumerate() {
        cc.on_transport_feedback(f, ms(t0, 3_000 + i as u64));
    }
    let again = cc.stats();
    assert_eq!(again.loss_fraction, st.loss_fraction);
    assert_eq!(again.acked_bps, st.acked_bps);
    assert_eq!(again.target_bps, st.target_bps);
    // a packet reported lost that arrives after all counts as received
    let s = (65_400 + 293) as u16;
    cc.on_transport_feedback(&[(s, Some(-5_000_000 + 2_950_000))], ms(t0, 3_100));
    assert!(cc.stats().loss_fraction < st.loss_fraction);
}

#[test]
fn receiver_clock_jump_is_resynchronised() {
    let t0 = Instant::now();
    let mut cc = Controller::new(CFG, t0);
    let mut offset = 1_000_000_000i64;
    for i in 0..4_000u64 {
        // the receiver's 24-bit reference time wraps at 20 s: its clock jumps back ~12 days
        if i == 2_000 {
            offset -= (1i64 << 24) * 64_000;
        }
        cc.on_packet_sent(i as u16, 1200, ms(t0, i * 10));
        cc.on_transport_feedback(&[(i as u16, Some(offset + i as i64 * 10_000 + 30_000))], ms(t0, i * 10 + 5));
        if i == 1_990 || i == 3_990 {
            let st = cc.stats();
            assert!(st.acked_bps > 900_000 && st.acked_bps < 1_000_000, "{i}: {st:?}");
        }
    }
    assert!(cc.target_bps() > CFG.start_bps, "it kept increasing: {:?}", cc.stats());
}

#[test]
fn receiver_reports_alone_drive_a_classic_loss_controller() {
    let t0 = Instant::now();
    let mut cc = Controller::new(CFG, t0);
    let mut t = 0;
    // no loss for 10 s: +8 %/s
    for _ in 0..10 {
        t += 1_000;
        cc.on_receiver_report(0, Some(Duration::from_millis(80)), ms(t0, t));
        cc.handle_timeout(ms(t0, t));
    }
    let up = cc.target_bps();
    assert!(up > 1_900_000 && up < 2_300_000, "{up}");
    assert_eq!(cc.stats().rtt, Some(Duration::from_millis(80)));
    // 5 % loss: hold
    for _ in 0..3 {
        t += 1_000;
        cc.on_receiver_report(13, None, ms(t0, t));
    }
    assert_eq!(cc.target_bps(), up);
    assert_eq!(cc.stats().state, State::Hold);
    // 30 % loss: down 15 % per report
    for _ in 0..3 {
        t += 1_000;
        cc.on_receiver_report(77, None, ms(t0, t));
    }
    let down = cc.target_bps() as f64 / up as f64;
    assert!((down - 0.85f64.powi(3)).abs() < 0.01, "{down}");
    assert_eq!(cc.stats().state, State::Decrease);
    // loss gone: without a delay signal the ceiling climbs back at 8 %/s (no release to the
    // delay-based estimate, which here is only these reports)
    let low = cc.target_bps();
    for _ in 0..3 {
        t += 1_000;
        cc.on_receiver_report(0, None, ms(t0, t));
        cc.handle_timeout(ms(t0, t));
    }
    let climbed = cc.target_bps() as f64 / low as f64;
    assert!(climbed > 1.1 && climbed < 1.35, "{climbed}");
}

#[test]
fn remb_alone_sets_the_estimate_and_later_caps_transport_cc() {
    let t0 = Instant::now();
    let mut cc = Controller::new(CFG, t0);
    cc.on_remb(3_000_000, ms(t0, 100));
    assert_eq!(cc.target_bps(), 3_000_000);
    cc.on_remb(500_000, ms(t0, 200));
    assert_eq!(cc.target_bps(), 500_000);
    cc.on_remb(50_000_000, ms(t0, 300));
    assert_eq!(cc.target_bps(), CFG.max_bps);
    cc.on_remb(1, ms(t0, 400));
    assert_eq!(cc.target_bps(), CFG.min_bps);
}

#[test]
fn feedback_timeout_without_transport_cc_waits_longer() {
    let t0 = Instant::now();
    let mut cc = Controller::new(CFG, t0);
    cc.on_receiver_report(0, None, t0);
    for i in 0..100u64 {
        cc.on_packet_sent(i as u16, 1200, ms(t0, i * 50));
        cc.handle_timeout(ms(t0, i * 50));
    }
    // 5 s of sending without any report: not cut yet (reports come ~1/s, may be lost)
    assert_eq!(cc.target_bps(), CFG.start_bps);
    for i in 100..200u64 {
        cc.on_packet_sent(i as u16, 1200, ms(t0, i * 50));
        cc.handle_timeout(ms(t0, i * 50));
    }
    assert!(cc.target_bps() <= CFG.start_bps / 2);
    // nothing sent: no timeout
    let mut idle = Controller::new(CFG, t0);
    idle.on_transport_feedback(&[], t0);
    idle.handle_timeout(ms(t0, 60_000));
    assert_eq!(idle.target_bps(), CFG.start_bps);
    assert_ne!(idle.stats().state, State::Hold);
}

#[test]
fn congestion_window_closes_on_unreported_data_and_only_while_feedback_flows() {
    let t0 = Instant::now();
    let mut cc = Controller::new(CFG, t0);
    // no feedback yet: no window, whatever is in flight
    for s in 0..100u16 {
        cc.on_packet_sent(s, 1200, ms(t0, u64::from(s)));
    }
    assert_eq!(cc.window_bytes(ms(t0, 100)), None);
    assert!(!cc.congested(ms(t0, 100)));
    // feedback on the first 10 (20 ms round trip): 90 x 1200 bytes still in flight, more than
    // 1 Mbit/s x (20 ms + 100 ms default interval + 100 ms) = 27.5 kB
    let fb: Vec<(u16, Option<i64>)> = (0..10u16).map(|s| (s, Some(i64::from(s) * 1000))).collect();
    cc.on_transport_feedback(&fb, ms(t0, 29));
    assert_eq!(cc.in_flight_bytes(), 90 * 1200);
    let w = cc.window_bytes(ms(t0, 30)).expect("window while feedback flows");
    assert!((20_000..40_000).contains(&w), "{w}");
    assert!(cc.congested(ms(t0, 30)));
    // reports on the rest (some lost: lost data has left the network too) open it
    let fb: Vec<(u16, Option<i64>)> = (10..100u16).map(|s| (s, (s % 7 != 0).then(|| i64::from(s) * 1000))).collect();
    cc.on_transport_feedback(&fb, ms(t0, 119));
    assert_eq!(cc.in_flight_bytes(), 0);
    assert!(!cc.congested(ms(t0, 120)));
    // silence: data piles up but the window no longer applies (the feedback timeout acts instead)
    for s in 100..200u16 {
        cc.on_packet_sent(s, 1200, ms(t0, 200));
    }
    assert!(cc.congested(ms(t0, 300)));
    assert!(!cc.congested(ms(t0, 700)));
}
