//! Engine scenarios, driven with a synthetic clock.

use fleetwire_proto::{
    Batch, Body, Event, FixType, Frame, Hello, Monitoring, Position, Reading, Record, Sample, Seq,
    Severity,
};

use super::*;

const T0: u64 = 1_764_000_000_000;

pub(crate) fn pos(lat: f64, lon: f64) -> Position {
    Position {
        lat_e7: (lat * 1e7).round() as i32,
        lon_e7: (lon * 1e7).round() as i32,
        alt_dm: 0,
        speed_cm_s: 0,
        heading_ddeg: 0,
        hacc_cm: 300,
        fix: FixType::Fix3d,
        satellites: 8,
    }
}

fn engine(cfg: EngineConfig) -> Engine {
    Engine::new(cfg, 4)
}

fn send(e: &Engine, now: u64, f: Frame<'_>) {
    e.ingest(now, &[Accepted::new(f, 40)]);
}

#[test]
fn sequence_faults_are_counted_exactly() {
    let e = engine(EngineConfig::default());
    let p = Body::Position(pos(48.0, 11.0));
    // 0 1 _ 3 5 4 4 6 : one lost (2), one reordered (4 after 5), one duplicate (4).
    for (i, s) in [0u32, 1, 3, 5, 4, 4, 6].into_iter().enumerate() {
        send(&e, T0 + i as u64 * 1000, Frame::new(7, s, 0, p));
    }
    let s = e.summary().totals;
    assert_eq!((s.lost(), s.reordered, s.duplicates), (1, 1, 1));
    // Frame 2 is still inside the window: missing, not yet confirmed lost.
    assert_eq!((s.pending, s.lost_confirmed()), (1, 0));
    e.with_device(7, |d| {
        assert_eq!((d.seq.received, d.seq.lost(), d.seq.duplicates, d.seq.reordered), (6, 1, 1, 1));
    })
    .unwrap();
    // The duplicate's record was not counted twice.
    assert_eq!(s.records.get(RecordKind::Position), 6);
}

#[test]
fn odometer_follows_a_route_and_ignores_jitter_while_parked() {
    let e = engine(EngineConfig::default());
    // Drive north 1 km in 100 m steps, 10 s apart (10 m/s).
    let step = 100.0 / geo::EARTH_RADIUS_M * 180.0 / std::f64::consts::PI;
    for i in 0..=10u32 {
        let t = T0 + u64::from(i) * 10_000;
        send(&e, t, Frame::new(1, i, t, Body::Position(pos(48.0 + step * f64::from(i), 11.0))));
    }
    let odo = e.with_device(1, |d| d.track.odometer_m).unwrap();
    assert!((odo - 1000.0).abs() < 0.5, "{odo}");
    // Park and jitter by up to ~4 m for 10 minutes.
    let end = 48.0 + step * 10.0;
    for i in 0..600u32 {
        let t = T0 + 100_000 + u64::from(i + 1) * 1000;
        let j = f64::from(i % 7) - 3.0;
        let p = pos(end + j * 1e-5 * 0.4, 11.0 + j * 1e-5 * 0.5);
        send(&e, t, Frame::new(1, 11 + i, t, Body::Position(p)));
    }
    e.with_device(1, |d| {
        assert!((d.track.odometer_m - odo).abs() < 1e-9, "jitter added distance");
        assert!(!d.track.moving);
        assert!(d.track.derived_speed_m_s < 10.0);
    })
    .unwrap();
}

#[test]
fn gps_jump_is_filtered_and_track_recovers() {
    let e = engine(EngineConfig::default());
    let t = |i: u64| T0 + i * 1000;
    send(&e, t(0), Frame::new(2, 0, t(0), Body::Position(pos(48.0, 11.0))));
    send(&e, t(1), Frame::new(2, 1, t(1), Body::Position(pos(48.0001, 11.0))));
    let before = e.with_device(2, |d| d.track.odometer_m).unwrap();
    // A single fix 500 km away one second later: 500 km/s.
    send(&e, t(2), Frame::new(2, 2, t(2), Body::Position(pos(52.5, 13.4))));
    send(&e, t(3), Frame::new(2, 3, t(3), Body::Position(pos(48.0002, 11.0))));
    // (0, 0) and no-fix fixes are filtered too.
    send(&e, t(4), Frame::new(2, 4, t(4), Body::Position(pos(0.0, 0.0))));
    let nofix = Position { fix: FixType::NoFix, ..pos(10.0, 10.0) };
    send(&e, t(5), Frame::new(2, 5, t(5), Body::Position(nofix)));
    // A fix from the future is taken at the server's clock; one older than
    // the last accepted is out of order.
    send(&e, t(6), Frame::new(2, 6, t(6) + 3_600_000, Body::Position(pos(48.0003, 11.0))));
    send(&e, t(7), Frame::new(2, 7, t(2), Body::Position(pos(48.0003, 11.0))));
    let s = e.summary().totals;
    let f = |r: FilterReason| s.filtered[r as usize];
    assert_eq!(f(FilterReason::ImplausibleSpeed), 1);
    assert_eq!(f(FilterReason::NullIsland), 1);
    assert_eq!(f(FilterReason::NoFix), 1);
    assert_eq!(f(FilterReason::FutureTimestamp), 0);
    assert_eq!(s.future.get(RecordKind::Position), 1);
    assert_eq!(f(FilterReason::OutOfOrder), 1);
    e.with_device(2, |d| {
        let added = d.track.odometer_m - before;
        assert!(added < 30.0, "jump leaked into the odometer: {added} m");
        assert_eq!(d.fix.unwrap().lat_e7, 480_003_000);
        assert_eq!(d.fix.unwrap().t_ms, t(6));
        assert_eq!(d.counts.filtered, 4);
    })
    .unwrap();
    // A device that really moved (the old fix was wrong) is re-anchored
    // after `relocate_after` consecutive refusals, without the jump.
    for i in 0..3u64 {
        let ti = t(10 + i);
        send(
            &e,
            ti,
            Frame::new(2, 10 + i as u32, ti, Body::Position(pos(52.5, 13.4 + i as f64 * 1e-5))),
        );
    }
    e.with_device(2, |d| {
        assert_eq!(d.fix.unwrap().lat_e7, 525_000_000);
        assert!(d.track.odometer_m - before < 30.0);
    })
    .unwrap();
}

#[test]
fn readings_and_health() {
    let e = engine(EngineConfig { reading_window_ms: 10_000, ..EngineConfig::default() });
    for i in 0..20u64 {
        let r = [Reading { name: "temp", value: i as f64 }, Reading { name: "rpm", value: 1000.0 }];
        let m = Monitoring {
            battery_pct: Some(90 - i as u8),
            readings: Seq::from_slice(&r),
            ..Monitoring::EMPTY
        };
        send(&e, T0 + i * 1000, Frame::new(3, i as u32, 0, Body::Monitoring(m)));
    }
    e.with_device(3, |d| {
        assert_eq!(d.health.battery_pct, Some(71));
        let rs = d.readings.as_ref().unwrap();
        let temp = rs.iter().find(|r| &*r.name == "temp").unwrap();
        let st = temp.stats(10_000, &mut Vec::new()).unwrap();
        // Samples 9..=19 are inside the 10 s window.
        assert_eq!((st.count, st.min, st.max, st.last), (11, 9.0, 19.0, 19.0));
        assert_eq!(st.p50, 14.0);
    })
    .unwrap();
}

#[test]
fn reading_names_per_device_are_capped() {
    let e = engine(EngineConfig { max_readings_per_device: 4, ..EngineConfig::default() });
    let names: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        let r = [Reading { name: n, value: 1.0 }];
        let m = Monitoring { readings: Seq::from_slice(&r), ..Monitoring::EMPTY };
        send(&e, T0, Frame::new(4, i as u32, 0, Body::Monitoring(m)));
    }
    assert_eq!(e.with_device(4, |d| d.readings.as_ref().unwrap().len()), Some(4));
    assert_eq!(e.summary().totals.readings_dropped, 6);
}

#[test]
fn reading_memory_stays_within_its_budget() {
    // 64 KiB per shard; every device sends 8 readings, 200 samples each.
    let budget = 64 << 10;
    let e = engine(EngineConfig { max_heap_per_shard: budget, ..EngineConfig::default() });
    let names: Vec<String> = (0..8).map(|i| format!("reading-{i}")).collect();
    let heap = |e: &Engine| {
        let mut v = Vec::new();
        e.for_each_shard(|s| {
            let real: usize = s.devices().iter().map(Device::heap_bytes).sum();
            assert_eq!(s.heap_bytes(), real, "the shard's account matches its devices");
            v.push(real);
        });
        v
    };
    for k in 0..200u32 {
        for dev in 1..=100u32 {
            let r: Vec<Reading<'_>> =
                names.iter().map(|n| Reading { name: n, value: f64::from(k) }).collect();
            let m = Monitoring { readings: Seq::from_slice(&r), ..Monitoring::EMPTY };
            send(&e, T0 + u64::from(k) * 100, Frame::new(dev, k, 0, Body::Monitoring(m)));
        }
    }
    // One frame may take a shard past the budget, never more.
    let frame_max = 8 * (128 * 16 + 64) + 8 * std::mem::size_of::<readings::ReadingSeries>();
    for h in heap(&e) {
        assert!(h <= budget + frame_max, "{h} bytes");
    }
    // Without the budget every series would hold 128 samples.
    let stored: usize = (1..=100u32)
        .map(|d| {
            e.with_device(d, |d| {
                d.readings.as_ref().unwrap().iter().map(|r| r.len()).sum::<usize>()
            })
            .unwrap()
        })
        .sum();
    assert!(stored < 100 * 8 * 128 / 4, "{stored} samples: the budget was never reached");
    // A new name at the budget is dropped and counted.
    let r = [Reading { name: "late", value: 1.0 }];
    let m = Monitoring { readings: Seq::from_slice(&r), ..Monitoring::EMPTY };
    send(&e, T0 + 30_000, Frame::new(1, 200, 0, Body::Monitoring(m)));
    assert_eq!(e.summary().totals.readings_dropped, 1);
    // Nor does new device info.
    let h = Hello { firmware: "1.0.0", model: "m", capabilities: 0 };
    send(&e, T0 + 30_000, Frame::new(1, 201, 0, Body::Hello(h)));
    assert_eq!(e.with_device(1, |d| d.info.is_none()), Some(true));
    heap(&e);
    // Series that exist keep working at the budget: the newest value is there.
    let last = e.with_device(1, |d| {
        let r = &d.readings.as_ref().unwrap()[0];
        r.stats(60_000, &mut Vec::new()).unwrap().last
    });
    assert_eq!(last, Some(199.0));
    // Evicting devices gives their memory back.
    let e2 = engine(EngineConfig {
        max_heap_per_shard: budget,
        max_devices_per_shard: 2,
        ..EngineConfig::default()
    });
    for dev in 1..=1000u32 {
        let r = [Reading { name: "x", value: 1.0 }];
        let m = Monitoring { readings: Seq::from_slice(&r), ..Monitoring::EMPTY };
        send(&e2, T0, Frame::new(dev, 0, 0, Body::Monitoring(m)));
    }
    assert_eq!(e2.summary().totals.readings_dropped, 0);
    heap(&e2);
}

#[test]
fn batches_use_sample_times() {
    let e = engine(EngineConfig::default());
    let samples = [
        Sample { offset_ms: 20_000, record: Record::Position(pos(48.0, 11.0)) },
        Sample { offset_ms: 10_000, record: Record::Position(pos(48.001, 11.0)) },
        Sample {
            offset_ms: 0,
            record: Record::Event(Event { code: 1, severity: Severity::Critical, text: None }),
        },
    ];
    let b = Body::Batch(Batch { samples: Seq::from_slice(&samples) });
    send(&e, T0 + 500, Frame::new(5, 0, T0, b));
    let s = e.summary().totals;
    assert_eq!(
        (
            s.records.get(RecordKind::Position),
            s.records.get(RecordKind::Event),
            s.batches,
            s.events[4]
        ),
        (2, 1, 1, 1)
    );
    e.with_device(5, |d| {
        let f = d.fix.unwrap();
        assert_eq!(f.t_ms, T0 - 10_000);
        // 111 m in 10 s.
        assert!((d.track.derived_speed_m_s - 11.1).abs() < 0.1);
        assert!((d.track.odometer_m - 111.2).abs() < 0.5);
        assert_eq!(d.last_event.unwrap().t_ms, T0);
    })
    .unwrap();
}

#[test]
fn hello_restarts_sequence_and_records_info() {
    let e = engine(EngineConfig::default());
    let p = Body::Position(pos(1.0, 1.0));
    for s in 0..5 {
        send(&e, T0, Frame::new(6, s, 0, p));
    }
    let h = Body::Hello(Hello { firmware: "2.0", model: "m", capabilities: 1 });
    send(&e, T0, Frame::new(6, 0, 0, h));
    send(&e, T0, Frame::new(6, 1, 0, p));
    let s = e.summary().totals;
    assert_eq!((s.restarts, s.duplicates, s.lost()), (1, 0, 0));
    assert_eq!(e.with_device(6, |d| d.info.as_ref().unwrap().firmware.to_string()).unwrap(), "2.0");
}

#[test]
fn jitter_and_latency_from_device_clock() {
    let e = engine(EngineConfig::default());
    // Sent every second; arrives with 100 ms, then alternately 100/300 ms delay.
    for i in 0..200u64 {
        let sent = T0 + i * 1000;
        let delay = if i % 2 == 0 { 100 } else { 300 };
        send(&e, sent + delay, Frame::new(8, i as u32, sent, Body::Position(pos(1.0, 1.0))));
    }
    e.with_device(8, |d| {
        // |D| is always 200 ms, so J converges to 200 ms.
        assert!((d.jitter_ms - 200.0).abs() < 1.0, "{}", d.jitter_ms);
        assert_eq!(d.latency_ms, Some(300.0));
    })
    .unwrap();
}

#[test]
fn tracked_devices_never_exceed_the_cap_and_lru_is_evicted() {
    let cfg = EngineConfig { max_devices_per_shard: 100, ..EngineConfig::default() };
    let e = Engine::new(cfg, 1);
    for id in 1..=1000u32 {
        send(&e, T0 + u64::from(id), Frame::new(id, 0, 0, Body::Position(pos(1.0, 1.0))));
        assert!(e.summary().devices <= 100);
    }
    let s = e.summary();
    assert_eq!((s.devices, s.totals.evicted), (100, 900));
    // The survivors are the 100 most recently seen.
    assert!(e.with_device(901, |_| ()).is_some());
    assert!(e.with_device(900, |_| ()).is_none());
    // Touching an old device keeps it; the next new one evicts another.
    send(&e, T0 + 5000, Frame::new(901, 1, 0, Body::Position(pos(1.0, 1.0))));
    send(&e, T0 + 5001, Frame::new(5000, 0, 0, Body::Position(pos(1.0, 1.0))));
    assert!(e.with_device(901, |_| ()).is_some());
    assert!(e.with_device(902, |_| ()).is_none());
    // Every index entry still points at the right device.
    e.for_each_shard(|sh| {
        for d in sh.devices() {
            assert_eq!(sh.get(d.id).map(|x| x.id), Some(d.id));
        }
    });
}

/// `max_devices` is the fleet's cap, not each shard's share of it: ids
/// that crowd one shard are all kept while the fleet is under the cap; at
/// the cap a new device evicts the least recently seen of its own shard.
#[test]
fn a_crowded_shard_keeps_its_devices_while_the_fleet_is_under_the_cap() {
    let cfg =
        EngineConfig { max_devices: 40, max_devices_per_shard: 20, ..EngineConfig::default() };
    let e = Engine::new(cfg, 4);
    // 16 ids of one shard (its share is 10), then 14 of the others.
    let (crowd, others): (Vec<u32>, Vec<u32>) = (1..2000u32).partition(|&id| e.shard_of(id) == 0);
    let mut t = T0;
    for &id in crowd.iter().take(16).chain(others.iter().take(14)) {
        t += 1;
        send(&e, t, Frame::new(id, 0, 0, Body::Position(pos(1.0, 1.0))));
    }
    assert_eq!((e.summary().devices, e.summary().totals.evicted), (30, 0));
    // 10 more fill the fleet to its cap, still without eviction.
    for &id in others.iter().skip(14).take(10) {
        t += 1;
        send(&e, t, Frame::new(id, 0, 0, Body::Position(pos(1.0, 1.0))));
    }
    assert_eq!((e.summary().devices, e.summary().totals.evicted), (40, 0));
    // At the cap: a new device of another shard evicts that shard's least
    // recently seen device, not the crowded shard's.
    let newcomer = others[30];
    let shard = e.shard_of(newcomer);
    let oldest = *others[..24].iter().find(|&&id| e.shard_of(id) == shard).unwrap();
    t += 1;
    send(&e, t, Frame::new(newcomer, 0, 0, Body::Position(pos(1.0, 1.0))));
    assert_eq!((e.summary().devices, e.summary().totals.evicted), (40, 1));
    assert!(e.with_device(oldest, |_| ()).is_none());
    assert!(crowd.iter().take(16).all(|&id| e.with_device(id, |_| ()).is_some()));
    // At the cap, the crowded shard's new devices evict its own.
    for &id in crowd.iter().skip(16).take(10) {
        t += 1;
        send(&e, t, Frame::new(id, 0, 0, Body::Position(pos(1.0, 1.0))));
    }
    let mut held = Vec::new();
    e.for_each_shard(|sh| held.push(sh.len()));
    assert_eq!((held[0], e.summary().devices, e.summary().totals.evicted), (16, 40, 11));
    // Under the fleet's cap, a shard still holds at most
    // max_devices_per_shard.
    let roomy = Engine::new(EngineConfig { max_devices: 1000, ..e.config().clone() }, 4);
    for (k, &id) in crowd.iter().take(30).enumerate() {
        send(&roomy, T0 + k as u64, Frame::new(id, 0, 0, Body::Position(pos(1.0, 1.0))));
    }
    assert_eq!((roomy.summary().devices, roomy.summary().totals.evicted), (20, 10));
    // A snapshot with more than max_devices keeps the most recently seen.
    let mut all = Vec::new();
    e.for_each_shard(|sh| all.extend(sh.devices().iter().cloned()));
    let smaller = Engine::new(EngineConfig { max_devices: 25, ..e.config().clone() }, 4);
    let newest: Vec<u32> = {
        let mut by_time = all.clone();
        by_time.sort_by_key(|d| std::cmp::Reverse(d.last_seen_ms));
        by_time.iter().take(25).map(|d| d.id).collect()
    };
    smaller.restore(all, None);
    assert_eq!(smaller.summary().devices, 25);
    assert!(newest.iter().all(|&id| smaller.with_device(id, |_| ()).is_some()));
    // The restored devices hold the budget: the next new one evicts.
    send(&smaller, t + 1, Frame::new(others[60], 0, 0, Body::Position(pos(1.0, 1.0))));
    assert_eq!(smaller.summary().devices, 25);
}

/// Listings see exactly the devices tracked, in id order, once each,
/// through creations, evictions and ids that come back; and the list of
/// ids stays bounded by the devices under churn without listings.
#[test]
fn listings_follow_creations_and_evictions_in_id_order() {
    let cfg =
        EngineConfig { max_devices: 50, max_devices_per_shard: 50, ..EngineConfig::default() };
    let e = Engine::new(cfg, 1);
    let listed = |e: &Engine| {
        let mut got = Vec::new();
        let mut after = None;
        while let Some(last) = e.visit_after(0, after, 7, &mut |d| got.push(d.id)) {
            after = Some(last);
        }
        got
    };
    let tracked = |e: &Engine| {
        let mut ids = Vec::new();
        e.for_each_shard(|sh| ids.extend(sh.devices().iter().map(|d| d.id)));
        ids.sort_unstable();
        ids
    };
    // An id evicted and back before the next listing is listed once.
    let small = Engine::new(
        EngineConfig { max_devices: 2, max_devices_per_shard: 2, ..EngineConfig::default() },
        1,
    );
    for (k, id) in [1u32, 2, 3, 1].into_iter().enumerate() {
        send(&small, T0 + k as u64, Frame::new(id, 0, 0, Body::Position(pos(1.0, 1.0))));
    }
    assert_eq!((listed(&small), tracked(&small)), (vec![1, 3], vec![1, 3]));
    // Ids in a scrambled order, some of them again later (after their
    // eviction), with a listing now and then.
    let mut t = T0;
    for k in 0..3000u32 {
        let id = (k.wrapping_mul(2_654_435_761) % 180) + 1;
        t += 1;
        send(&e, t, Frame::new(id, k, 0, Body::Position(pos(1.0, 1.0))));
        if k % 499 == 0 || k == 2999 {
            assert_eq!(listed(&e), tracked(&e), "after frame {k}");
        }
        e.for_each_shard(|sh| {
            assert!(sh.id_list_len() <= 2 * sh.len() + 65, "{}", sh.id_list_len())
        });
    }
    let evicted = e.summary().totals.evicted;
    assert!(evicted > 500, "{evicted}");
    // page_ids agrees (its merge of the shards' ordered ids).
    assert_eq!(e.page_ids(None, 0, 1000, &|_| true), tracked(&e));
}

#[test]
fn export_slots_are_capped_and_expire() {
    let cfg =
        EngineConfig { max_exported_devices: 10, series_ttl_ms: 60_000, ..EngineConfig::default() };
    let e = engine(cfg);
    for id in 1..=30u32 {
        send(&e, T0, Frame::new(id, 0, 0, Body::Position(pos(1.0, 1.0))));
    }
    assert_eq!(e.summary().exported, 10);
    // The flags, and the index /metrics reads, agree.
    let exported = |e: &Engine| {
        let mut flagged = Vec::new();
        e.for_each_shard(|s| {
            flagged.extend(s.devices().iter().filter(|d| d.exported).map(|d| d.id));
        });
        let mut indexed = Vec::new();
        e.visit_exported_paged(&mut |d| indexed.push(d.id));
        flagged.sort_unstable();
        indexed.sort_unstable();
        assert_eq!(flagged, indexed);
        flagged.len()
    };
    assert_eq!(exported(&e), 10);
    // Everybody goes silent; after the TTL no series are exported.
    e.tick(T0 + 61_000);
    assert_eq!((e.summary().exported, exported(&e)), (0, 0));
    assert_eq!(e.summary().totals.online, 0);
    // A device that speaks again gets a slot back.
    send(&e, T0 + 62_000, Frame::new(25, 1, 0, Body::Position(pos(1.0, 1.0))));
    e.tick(T0 + 62_000);
    assert_eq!((e.summary().exported, e.summary().totals.online), (1, 1));
    assert_eq!(exported(&e), 1);
}

#[test]
fn an_evicted_device_leaves_the_export_index() {
    let cfg = EngineConfig {
        max_devices_per_shard: 4,
        max_exported_devices: 100,
        ..EngineConfig::default()
    };
    let e = Engine::new(cfg, 1);
    for id in 1..=10u32 {
        send(&e, T0 + u64::from(id), Frame::new(id, 0, 0, Body::Position(pos(1.0, 1.0))));
    }
    let mut indexed = Vec::new();
    e.visit_exported_paged(&mut |d| indexed.push(d.id));
    assert_eq!(indexed, vec![7, 8, 9, 10]);
    assert_eq!(e.summary().exported, 4);
}

/// Found by the ingest fuzzer: device clocks at the ends of the u64 range
/// must not overflow the transit-time arithmetic.
#[test]
fn extreme_device_clocks_do_not_overflow() {
    let e = engine(EngineConfig::default());
    for (i, ts) in [u64::MAX, 1, u64::MAX, 0, i64::MAX as u64 + 1, 1].into_iter().enumerate() {
        send(&e, T0, Frame::new(9, i as u32, ts, Body::Position(pos(1.0, 1.0))));
    }
    e.with_device(9, |d| {
        assert!(d.jitter_ms.is_finite());
        assert!(d.latency_ms.is_some_and(f64::is_finite));
    })
    .unwrap();
}

/// 2100-01-01T00:00:00Z: a device clock far beyond `max_future`.
const Y2100: u64 = 4_102_444_800_000;

fn monitoring<'a>(battery: u8, readings: &'a [Reading<'a>]) -> Body<'a> {
    Body::Monitoring(Monitoring {
        battery_pct: Some(battery),
        readings: Seq::from_slice(readings),
        ..Monitoring::EMPTY
    })
}

fn event(code: u16) -> Body<'static> {
    Body::Event(Event { code, severity: Severity::Warning, text: None })
}

/// The statistics of reading `name` of device `id`, as the API shows them.
fn stats(e: &Engine, id: u32, name: &str) -> readings::WindowStats {
    let window = e.config().reading_window_ms;
    e.with_device(id, |d| {
        let r = d.readings.as_ref().unwrap().iter().find(|r| &*r.name == name).unwrap();
        r.stats(window, &mut Vec::new()).unwrap()
    })
    .unwrap()
}

#[test]
fn a_frame_dated_2100_is_taken_at_the_server_clock_and_poisons_nothing() {
    let e = engine(EngineConfig::default());
    let t = |i: u64| T0 + i * 1000;
    let temp = |v: f64| [Reading { name: "temp", value: v }];
    send(&e, t(0), Frame::new(10, 0, Y2100, monitoring(5, &temp(99.0))));
    send(&e, t(0), Frame::new(10, 1, Y2100, event(7)));
    send(&e, t(0), Frame::new(10, 2, Y2100, Body::Position(pos(48.0, 11.0))));
    e.with_device(10, |d| {
        assert_eq!((d.health.t_ms, d.health.battery_pct), (t(0), Some(5)));
        assert_eq!(d.last_event.map(|l| (l.code, l.t_ms)), Some((7, t(0))));
        assert_eq!(d.fix.map(|f| f.t_ms), Some(t(0)));
        // No latency of 75 years either.
        assert_eq!(d.latency_ms, None);
    })
    .unwrap();
    // Honest frames after it are newer, as they are.
    for i in 1..=20u64 {
        let v = temp(20.0 + i as f64);
        send(&e, t(i), Frame::new(10, 2 + i as u32, t(i), monitoring(80 - i as u8, &v)));
    }
    send(&e, t(21), Frame::new(10, 23, t(21), event(8)));
    let step = 50.0 / geo::EARTH_RADIUS_M * 180.0 / std::f64::consts::PI;
    send(&e, t(22), Frame::new(10, 24, t(22), Body::Position(pos(48.0 + step, 11.0))));
    e.with_device(10, |d| {
        assert_eq!(d.health.battery_pct, Some(60));
        assert_eq!(d.last_event.map(|l| l.code), Some(8));
        assert_eq!(d.fix.map(|f| f.t_ms), Some(t(22)));
        assert!((d.track.odometer_m - 50.0).abs() < 0.5, "{}", d.track.odometer_m);
    })
    .unwrap();
    let st = stats(&e, 10, "temp");
    assert_eq!((st.count, st.last, st.max), (21, 40.0, 99.0));
    let s = e.summary().totals;
    assert_eq!(
        [RecordKind::Position, RecordKind::Monitoring, RecordKind::Event].map(|k| s.future.get(k)),
        [1, 1, 1]
    );
    assert_eq!(s.filtered.iter().sum::<u64>(), 0);
    // A batch dated 2100: its samples are taken at their offsets before
    // the arrival time, and each is counted.
    let samples = [
        Sample {
            offset_ms: 2_000,
            record: Record::Event(Event { code: 9, severity: Severity::Info, text: None }),
        },
        Sample { offset_ms: 0, record: Record::Position(pos(48.0 + 2.0 * step, 11.0)) },
    ];
    let b = Body::Batch(Batch { samples: Seq::from_slice(&samples) });
    send(&e, t(30), Frame::new(10, 25, Y2100, b));
    e.with_device(10, |d| {
        assert_eq!(d.last_event.map(|l| (l.code, l.t_ms)), Some((9, t(28))));
        assert_eq!(d.fix.map(|f| f.t_ms), Some(t(30)));
    })
    .unwrap();
    let s = e.summary().totals;
    assert_eq!((s.future.get(RecordKind::Position), s.future.get(RecordKind::Event)), (2, 2));
}

#[test]
fn a_fix_dated_four_minutes_ahead_does_not_hold_the_track() {
    let e = engine(EngineConfig::default());
    let t = |i: u64| T0 + i * 1000;
    let step = 50.0 / geo::EARTH_RADIUS_M * 180.0 / std::f64::consts::PI;
    let at = |i: u64| Body::Position(pos(48.0 + step * i as f64, 11.0));
    send(&e, t(0), Frame::new(11, 0, t(0), at(0)));
    // Within max_future (5 minutes), so taken as dated...
    send(&e, t(1), Frame::new(11, 1, t(1) + 240_000, at(1)));
    // ...and the honest fixes after it are earlier: the clock went back.
    for i in 2..=11u64 {
        send(&e, t(i), Frame::new(11, i as u32, t(i), at(i)));
    }
    let s = e.summary().totals;
    assert_eq!(s.filtered[FilterReason::OutOfOrder as usize], 0);
    assert_eq!(s.clock_resets.get(RecordKind::Position), 1);
    e.with_device(11, |d| {
        assert_eq!(d.fix.map(|f| f.t_ms), Some(t(11)));
        assert!((d.track.odometer_m - 550.0).abs() < 1.0, "{}", d.track.odometer_m);
        assert!((d.track.derived_speed_m_s - 50.0).abs() < 0.5);
    })
    .unwrap();
}

#[test]
fn backlog_and_reordering_are_still_out_of_order() {
    // An honest device's backlog, and a device whose clock runs 2 minutes
    // fast sending a frame late: neither resets anything.
    let e = engine(EngineConfig::default());
    let t = |i: u64| T0 + i * 1000;
    send(&e, t(10), Frame::new(12, 0, t(10), Body::Position(pos(48.0, 11.0))));
    send(&e, t(11), Frame::new(12, 1, t(11), monitoring(50, &[])));
    send(&e, t(11), Frame::new(12, 2, t(11), event(1)));
    let samples = [
        Sample { offset_ms: 3_600_000, record: Record::Position(pos(48.1, 11.0)) },
        Sample { offset_ms: 3_600_000, record: Record::Monitoring(Monitoring::EMPTY) },
        Sample {
            offset_ms: 3_600_000,
            record: Record::Event(Event { code: 5, severity: Severity::Info, text: None }),
        },
    ];
    let b = Body::Batch(Batch { samples: Seq::from_slice(&samples) });
    send(&e, t(12), Frame::new(12, 3, t(12), b));
    let fast = |i: u64| t(i) + 120_000;
    send(&e, t(13), Frame::new(13, 0, fast(13), Body::Position(pos(48.0, 11.0))));
    send(&e, t(14), Frame::new(13, 2, fast(14), monitoring(40, &[])));
    send(&e, t(15), Frame::new(13, 1, fast(12), Body::Position(pos(48.0, 11.0))));
    send(&e, t(15), Frame::new(13, 3, fast(12), monitoring(41, &[])));
    let s = e.summary().totals;
    assert_eq!(s.filtered[FilterReason::OutOfOrder as usize], 2);
    assert_eq!(s.clock_resets.total(), 0);
    e.with_device(12, |d| {
        assert_eq!(d.fix.map(|f| f.t_ms), Some(t(10)));
        assert_eq!((d.health.t_ms, d.health.battery_pct), (t(11), Some(50)));
        assert_eq!(d.last_event.map(|l| l.code), Some(1));
    })
    .unwrap();
    assert_eq!(e.with_device(13, |d| d.health.battery_pct), Some(Some(40)));
}

#[test]
fn a_device_restored_with_times_in_2100_recovers() {
    // What a snapshot of an earlier version holds after one frame dated
    // 2100: the health, the last event, the fix and a reading in 2100.
    let e = engine(EngineConfig::default());
    let t = |i: u64| T0 + i * 1000;
    let mut d = Device::new(14, t(0));
    d.health.t_ms = Y2100;
    d.health.battery_pct = Some(5);
    d.last_event = Some(device::LastEvent { code: 1, severity: 0, t_ms: Y2100 });
    d.fix = Some(device::Fix::from_position(&pos(48.0, 11.0), Y2100));
    let mut r = readings::ReadingSeries::new("temp");
    r.push(Y2100, 99.0, timing::Clock { now_ms: Y2100, max_future_ms: 0 }, 60_000, 128, true);
    d.readings = Some(Box::new(vec![r]));
    e.restore(vec![d], None);
    for i in 1..=10u64 {
        let v = [Reading { name: "temp", value: i as f64 }];
        send(&e, t(i), Frame::new(14, i as u32, t(i), monitoring(90, &v)));
    }
    send(&e, t(11), Frame::new(14, 11, t(11), event(2)));
    send(&e, t(12), Frame::new(14, 12, t(12), Body::Position(pos(48.0001, 11.0))));
    e.with_device(14, |d| {
        assert_eq!((d.health.t_ms, d.health.battery_pct), (t(10), Some(90)));
        assert_eq!(d.last_event.map(|l| l.code), Some(2));
        assert_eq!(d.fix.map(|f| f.t_ms), Some(t(12)));
    })
    .unwrap();
    let st = stats(&e, 14, "temp");
    assert_eq!((st.count, st.min, st.max, st.last_ms), (10, 1.0, 10.0, t(10)));
    let s = e.summary().totals;
    assert_eq!(
        [RecordKind::Position, RecordKind::Monitoring, RecordKind::Event]
            .map(|k| s.clock_resets.get(k)),
        [1, 1, 1]
    );
}

#[test]
fn fleet_counters_of_an_older_snapshot_header_still_read() {
    // The header of a snapshot written before `future` and `clock_resets`
    // existed: the same fields, without those two.
    #[derive(serde::Serialize)]
    struct Before {
        records: [u64; 4],
        batches: u64,
        filtered: [u64; 7],
        events: [u64; 5],
        gaps: u64,
        pending: u64,
        duplicates: u64,
        reordered: u64,
        late: u64,
        restarts: u64,
        readings_dropped: u64,
        devices_created: u64,
        evicted: u64,
        online: u64,
    }
    let old = Before {
        records: [1, 2, 3, 4],
        batches: 5,
        filtered: [6; 7],
        events: [7; 5],
        gaps: 8,
        pending: 9,
        duplicates: 10,
        reordered: 11,
        late: 12,
        restarts: 13,
        readings_dropped: 14,
        devices_created: 15,
        evicted: 16,
        online: 17,
    };
    let bytes = postcard::to_allocvec(&(99u64, &old)).unwrap();
    let (taken, t): (u64, ShardTotals) = postcard::from_bytes(&bytes).unwrap();
    assert_eq!((taken, t.records.get(RecordKind::Hello), t.evicted, t.online), (99, 4, 16, 17));
    assert_eq!((t.future.total(), t.clock_resets.total()), (0, 0));
    // And the new fields round-trip.
    let mut t2 = t.clone();
    t2.future.count(RecordKind::Event);
    t2.clock_resets.count(RecordKind::Position);
    let (_, back): (u64, ShardTotals) =
        postcard::from_bytes(&postcard::to_allocvec(&(1u64, &t2)).unwrap()).unwrap();
    assert_eq!(back, t2);
}

/// Pages of ids are the sorted ids, however they fall into shards, with
/// and without a filter, by offset and after a cursor, also once devices
/// were evicted.
#[test]
fn pages_of_ids_are_in_order_and_complete() {
    let cfg = EngineConfig { max_devices_per_shard: 100, ..EngineConfig::default() };
    let e = Engine::new(cfg, 8);
    let mut x = 12345u64;
    for i in 0..1200u64 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let id = 1 + (x >> 40) as u32 % 100_000;
        send(&e, T0 + i, Frame::new(id, 0, 0, event(1)));
    }
    let mut all = Vec::new();
    e.for_each_shard(|s| all.extend(s.devices().iter().map(|d| d.id)));
    all.sort_unstable();
    assert!(all.len() > 500 && all.len() <= 800, "{}", all.len());
    let any = |_: &Device| true;
    let even = |d: &Device| d.id % 2 == 0;
    let evens: Vec<u32> = all.iter().copied().filter(|id| id % 2 == 0).collect();
    for (skip, take) in [(0, 10), (0, 5000), (37, 300), (650, 100), (5000, 10)] {
        let want: Vec<u32> = all.iter().copied().skip(skip).take(take).collect();
        assert_eq!(e.page_ids(None, skip, take, &any), want, "skip {skip} take {take}");
        let want: Vec<u32> = evens.iter().copied().skip(skip).take(take).collect();
        assert_eq!(e.page_ids(None, skip, take, &even), want, "even, skip {skip} take {take}");
    }
    // Walking by cursor visits each id once.
    let mut walked: Vec<u32> = Vec::new();
    let mut after = None;
    loop {
        let page = e.page_ids(after, 0, 97, &any);
        walked.extend(&page);
        match page.last() {
            Some(&last) if page.len() == 97 => after = Some(last),
            _ => break,
        }
    }
    assert_eq!(walked, all);
    assert_eq!(e.page_ids(Some(all[10]), 0, 3, &any), all[11..14].to_vec());
}

#[test]
fn readers_hold_locks_through_the_holder_and_get_the_same_answers() {
    // A holder that runs every section on another thread, as the server's
    // does, and counts them.
    let sections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ran_on = Arc::new(Mutex::new(Vec::new()));
    let holder: Holder = {
        let (sections, ran_on) = (sections.clone(), ran_on.clone());
        Arc::new(move |section: &mut (dyn FnMut() + Send)| {
            sections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Scoped: the section borrows from the caller, who waits.
            std::thread::scope(|s| {
                s.spawn(|| {
                    ran_on.lock().push(std::thread::current().id());
                    section();
                });
            });
        })
    };
    let plain = engine(EngineConfig::default());
    let held = engine(EngineConfig::default());
    held.set_holder(holder);
    for i in 0..2_000u64 {
        let id = 1 + (i * 7919 % 1_000) as u32;
        let f = Frame::new(id, i as u32, T0 + i, monitoring((i % 100) as u8, &[]));
        send(&plain, T0 + i, f);
        send(&held, T0 + i, f);
    }
    let ids = |e: &Engine| {
        let mut v = Vec::new();
        for s in 0..e.shard_count() {
            let mut after = None;
            while let Some(last) = e.visit_after(s, after, super::VISIT_PAGE, &mut |d| {
                v.push((d.id, d.health.battery_pct));
            }) {
                after = Some(last);
            }
        }
        v
    };
    let want = ids(&plain);
    assert_eq!(want.len(), 1_000);
    assert_eq!(held.held(|| ids(&held)), want);
    assert_eq!(sections.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_ne!(ran_on.lock()[0], std::thread::current().id());
    // Upkeep takes a section per 32 shards, the snapshot's copies one per
    // shard.
    assert_eq!(held.tick(T0 + 3_000), plain.tick(T0 + 3_000));
    let mut copied = 0;
    held.for_each_shard_marked(&mut |devices, _| {
        copied += devices.len();
        true
    });
    assert_eq!(copied, 1_000);
    let n = held.shard_count();
    assert_eq!(sections.load(std::sync::atomic::Ordering::Relaxed), 1 + n.div_ceil(32) + n);
}

#[test]
fn odometers_of_simulated_routes_stay_within_the_stated_bound_of_haversine() {
    use crate::sim::model::{SimDevice, frame_buf};
    // Simulated vehicles (driving, turning, stopping, GPS noise; id 0 is
    // not a device) at three
    // latitudes, one fix a second for an hour: every advance of the
    // odometer is compared with the haversine distance from the point it
    // advanced from.
    let e = engine(EngineConfig::default());
    let mut buf = frame_buf();
    let (mut advances, mut worst, mut total, mut reference) = (0u64, 0.0f64, 0.0, 0.0);
    for (k, center) in [(48.1, 11.6), (-33.9, 151.2), (69.6, 18.9)].into_iter().enumerate() {
        for n in 0..20u32 {
            let id = k as u32 * 100 + n + 1;
            let mut dev = SimDevice::new(id, 42, center);
            let (mut anchor, mut odo) = (None::<(i32, i32)>, 0.0);
            for s in 0..3600u64 {
                let now = T0 + s * 1000;
                let len = dev.next_frame(now, 1.0, &mut buf);
                let f =
                    fleetwire_proto::decode(&buf[..len]).expect("the simulator's frames decode");
                send(&e, now, f);
                let (o, fix) = e.with_device(id, |d| (d.track.odometer_m, d.fix)).unwrap();
                let Some(fix) = fix else { continue };
                if o > odo {
                    let (alat, alon) = anchor.expect("the odometer advances from an anchor");
                    let h = geo::haversine_m(
                        f64::from(alat) * 1e-7,
                        f64::from(alon) * 1e-7,
                        fix.lat(),
                        fix.lon(),
                    );
                    worst = worst.max(((o - odo) - h).abs());
                    reference += h;
                    advances += 1;
                    anchor = Some((fix.lat_e7, fix.lon_e7));
                } else if anchor.is_none() {
                    anchor = Some((fix.lat_e7, fix.lon_e7));
                }
                odo = o;
            }
            total += odo;
        }
    }
    assert!(advances > 10_000, "{advances} advances");
    assert!(worst <= geo::FAST_ERROR_M, "an advance was {worst} m off haversine");
    let bound = advances as f64 * geo::FAST_ERROR_M;
    assert!(
        (total - reference).abs() <= bound,
        "{total} m against {reference} m (bound {bound} m)"
    );
}

#[test]
fn upkeep_of_the_silent_devices_agrees_with_a_walk_of_all() {
    // Two engines get the same frames; before each tick one is told to
    // look at every device (as upkeep always did), the other looks only at
    // the devices noted since and the silent ones. Devices come and go
    // (small shards evict), fall silent for longer than offline_after and
    // the series TTL, and come back: the transitions, the online count and
    // the export slots must agree at every tick.
    let cfg = EngineConfig {
        max_devices_per_shard: 40,
        max_exported_devices: 60,
        offline_after_ms: 60_000,
        series_ttl_ms: 120_000,
        ..EngineConfig::default()
    };
    let (walk, all) = (engine(cfg.clone()), engine(cfg));
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut now = T0;
    let mut seq = std::collections::HashMap::new();
    let (mut transitions, mut went_offline) = (0usize, 0usize);
    for step in 0..3_000 {
        now += rnd(20_000);
        // A few devices of 250 send; some of them often, most rarely.
        for _ in 0..rnd(12) {
            let id = if rnd(3) == 0 { 1 + rnd(20) } else { 1 + rnd(250) } as u32;
            let s = seq.entry(id).or_insert(0u32);
            *s += 1;
            let f = Frame::new(id, *s, 0, Body::Position(pos(48.0, 11.0)));
            send(&walk, now, f);
            send(&all, now, f);
        }
        if step % 3 == 0 {
            all.walk_all_next_tick();
            let (mut a, mut b) = (walk.tick(now), all.tick(now));
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b, "transitions at step {step}");
            transitions += a.len();
            went_offline += a.iter().filter(|t| !t.1).count();
            let (sa, sb) = (walk.summary(), all.summary());
            assert_eq!((sa.totals.online, sa.exported), (sb.totals.online, sb.exported));
            assert_eq!(sa.devices, sb.devices);
        }
    }
    assert!(transitions > 1_000 && went_offline > 300, "{transitions} {went_offline}");
}

#[test]
fn upkeep_follows_a_settled_device_moved_by_an_eviction() {
    // Three devices fall silent for good and are passed by upkeep (offline,
    // no export slot); a fourth evicts the oldest, and the newest silent
    // one moves into its slab place. The fourth goes offline in its turn:
    // upkeep must still find it, as a walk of all does.
    let cfg = EngineConfig {
        max_devices_per_shard: 3,
        offline_after_ms: 60_000,
        series_ttl_ms: 120_000,
        ..EngineConfig::default()
    };
    let (walk, all) = (Engine::new(cfg.clone(), 1), Engine::new(cfg, 1));
    let both = |now: u64, id: u32| {
        let f = Frame::new(id, 1, 0, Body::Position(pos(48.0, 11.0)));
        send(&walk, now, f);
        send(&all, now, f);
    };
    let tick = |now: u64| {
        all.walk_all_next_tick();
        let (mut a, mut b) = (walk.tick(now), all.tick(now));
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "transitions at {now}");
        assert_eq!(walk.summary().totals.online, all.summary().totals.online);
        a
    };
    for id in 1..=3 {
        both(T0, id);
    }
    assert_eq!(tick(T0 + 1_000).len(), 3);
    assert_eq!(tick(T0 + 200_000), vec![(1, false), (2, false), (3, false)]);
    both(T0 + 201_000, 4);
    assert_eq!(tick(T0 + 202_000), vec![(4, true)]);
    assert_eq!(tick(T0 + 300_000), vec![(4, false)]);
}
