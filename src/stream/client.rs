//! One live-stream client: its filter (parsed from the query string,
//! refusing what it does not know), the snapshot it starts with or the
//! messages it missed since `Last-Event-ID`, then the broadcast, rate-limited
//! per device (`max_rate`: the newest state wins) and, when it falls behind
//! its window, a `dropped` notice and a fresh snapshot.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::message::{Kind, Message, View};
use super::{ClientSlot, StreamHub};
use crate::clock::now_ms;

/// A query parameter the stream does not take, or a value it cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {reason}")]
pub(crate) struct FilterError {
    /// The parameter.
    pub(crate) param: String,
    /// What is wrong.
    pub(crate) reason: &'static str,
}

/// What a client wants to see.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Filter {
    devices: Option<HashSet<u32>>,
    kinds: Option<Vec<Kind>>,
    /// min lon, min lat, max lon, max lat.
    bbox: Option<[f64; 4]>,
    online: Option<bool>,
    /// Most updates per second per device and kind.
    max_rate: Option<f64>,
}

/// Most devices a `device=` filter may list.
const MAX_DEVICES: usize = 10_000;

fn bad(param: &str, reason: &'static str) -> FilterError {
    FilterError { param: param.to_string(), reason }
}

impl Filter {
    /// Parses `device=1,2,3&kind=position,event&bbox=minlon,minlat,maxlon,maxlat&online=true&max_rate=2`
    /// (and `access_token`, which is the HTTP layer's).
    pub(crate) fn parse(query: &str) -> Result<Filter, FilterError> {
        let mut f = Filter::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "device" => {
                    let ids: Result<HashSet<u32>, _> =
                        v.split(',').map(|s| s.trim().parse::<u32>()).collect();
                    let ids =
                        ids.map_err(|_| bad("device", "device ids are numbers, comma-separated"))?;
                    if ids.len() > MAX_DEVICES {
                        return Err(bad("device", "at most 10000 devices"));
                    }
                    f.devices = Some(ids);
                }
                "kind" => {
                    let mut kinds = Vec::new();
                    for name in v.split(',') {
                        let kind = Kind::FILTERABLE
                            .into_iter()
                            .find(|k| k.as_str() == name.trim())
                            .ok_or_else(|| {
                                bad(
                                    "kind",
                                    "kinds are position, monitoring, event, hello, online, offline",
                                )
                            })?;
                        kinds.push(kind);
                    }
                    f.kinds = Some(kinds);
                }
                "bbox" => {
                    let n: Result<Vec<f64>, _> =
                        v.split(',').map(|s| s.trim().parse::<f64>()).collect();
                    let b = match n.as_deref() {
                        Ok([a, b, c, d]) => [*a, *b, *c, *d],
                        _ => return Err(bad("bbox", "four numbers: minlon,minlat,maxlon,maxlat")),
                    };
                    let lon_ok = |x: f64| (-180.0..=180.0).contains(&x);
                    let lat_ok = |x: f64| (-90.0..=90.0).contains(&x);
                    if !(lon_ok(b[0]) && lon_ok(b[2]) && lat_ok(b[1]) && lat_ok(b[3]))
                        || b[0] > b[2]
                        || b[1] > b[3]
                    {
                        return Err(bad(
                            "bbox",
                            "out of range (longitudes -180..180, latitudes -90..90, min before max)",
                        ));
                    }
                    f.bbox = Some(b);
                }
                "online" => {
                    f.online = Some(match &*v {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad("online", "true or false")),
                    });
                }
                "max_rate" => {
                    let r: f64 =
                        v.parse().map_err(|_| bad("max_rate", "a number of updates per second"))?;
                    if !(r.is_finite() && r > 0.0 && r <= 1000.0) {
                        return Err(bad("max_rate", "more than 0, at most 1000"));
                    }
                    f.max_rate = Some(r);
                }
                "access_token" => {}
                other => return Err(bad(other, "unknown parameter")),
            }
        }
        Ok(f)
    }

    /// Whether a device in this state belongs to the client's view.
    fn wants_device(&self, id: u32, at: Option<(f64, f64)>, online: bool) -> bool {
        self.devices.as_ref().is_none_or(|d| d.contains(&id))
            && self.online.is_none_or(|o| o == online)
            && self.bbox.is_none_or(|b| {
                at.is_some_and(|(lon, lat)| {
                    (b[0]..=b[2]).contains(&lon) && (b[1]..=b[3]).contains(&lat)
                })
            })
    }

    /// Whether the client gets `m`. An offline transition goes to every
    /// client following the device, whatever `online=` and `bbox` say, so
    /// it can drop the device from its view.
    fn wants(&self, m: &Message) -> bool {
        if !m.kind.filterable() {
            return true;
        }
        if self.kinds.as_ref().is_some_and(|k| !k.contains(&m.kind)) {
            return false;
        }
        let Some(id) = m.device else { return true };
        if m.kind == Kind::Offline {
            return self.devices.as_ref().is_none_or(|d| d.contains(&id));
        }
        self.wants_device(id, m.at, m.online)
    }
}

/// One client's delivery.
pub(crate) struct Client {
    slot: ClientSlot,
    filter: Filter,
    /// Messages to send before the broadcast.
    queue: VecDeque<Arc<Message>>,
    /// Broadcast messages up to this id were delivered (by a replay).
    seen_up_to: u64,
    /// The SSE id of snapshot messages: where a reconnect resumes.
    pub(crate) resume_id: u64,
    /// Per device and kind: when the last update went out.
    last_sent: HashMap<(u32, u8), Instant>,
    /// Updates held back by `max_rate`, newest per device and kind.
    held: HashMap<(u32, u8), (Instant, Arc<Message>)>,
    /// Where the snapshot being sent has got to.
    cursor: Option<Cursor>,
}

/// A snapshot in progress: the next devices to read.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    shard: usize,
    /// The last device id of `shard` read.
    after: Option<u32>,
    /// When the snapshot started (its messages' time).
    now: u64,
    /// Devices sent so far.
    devices: usize,
}

/// Devices read into a snapshot at a time (under one shard lock): a
/// client that stops reading holds at most this many snapshot messages.
const SNAPSHOT_PAGE: usize = 64;

/// What a broadcast message comes to for one client.
enum Step {
    Send(Arc<Message>),
    Skip,
    Closed,
}

impl Client {
    /// A client with `filter`, resuming after `last_id` when the replay
    /// buffer still has everything since, else starting with a snapshot.
    pub(crate) fn start(slot: ClientSlot, filter: Filter, last_id: Option<u64>) -> Client {
        let mut c = Client {
            resume_id: slot.hub.next_id().saturating_sub(1),
            slot,
            filter,
            queue: VecDeque::new(),
            seen_up_to: 0,
            last_sent: HashMap::new(),
            held: HashMap::new(),
            cursor: None,
        };
        match last_id.and_then(|id| c.slot.hub.replay_after(id)) {
            Some(missed) => {
                c.seen_up_to = missed.last().map_or(last_id.unwrap_or(0), |m| m.id);
                c.queue.extend(missed.into_iter().filter(|m| c.filter.wants(m)));
            }
            None => c.snapshot(),
        }
        c
    }

    fn hub(&self) -> &StreamHub {
        &self.slot.hub
    }

    /// Starts a snapshot: the current state of every device the client
    /// follows, then `snapshot_end`. It is read a page at a time as the
    /// client takes it, so a client that stops reading holds one page, not
    /// the fleet.
    fn snapshot(&mut self) {
        self.resume_id = self.hub().next_id().saturating_sub(1);
        self.cursor = Some(Cursor { shard: 0, after: None, now: now_ms(), devices: 0 });
    }

    /// Queues the snapshot's next page (devices of one shard, copied
    /// under its lock, JSON built after), until something is queued or the
    /// snapshot ends.
    fn fill(&mut self) {
        let engine = self.slot.hub.engine.clone();
        let cfg = engine.config();
        while self.queue.is_empty() {
            let Some(c) = self.cursor.as_mut() else { return };
            if c.shard >= engine.shard_count() {
                let end = Message::snapshot_end(c.devices, c.now);
                self.cursor = None;
                self.queue.push_back(Arc::new(end));
                return;
            }
            let (now, filter) = (c.now, &self.filter);
            let mut views = Vec::new();
            // Held at the receive path's priority (Engine::held).
            let last = engine.held(|| {
                engine.visit_after(c.shard, c.after, SNAPSHOT_PAGE, &mut |d| {
                    let v = View::of(d, now, cfg, false);
                    if filter.wants_device(v.id(), v.at(), v.online()) {
                        views.push(v);
                    }
                })
            });
            match last {
                Some(id) => c.after = Some(id),
                None => (c.shard, c.after) = (c.shard + 1, None),
            }
            c.devices += views.len();
            self.queue.extend(views.iter().map(|v| Arc::new(v.snapshot(now))));
        }
    }

    /// The next queued message (a replay, a snapshot page, a notice).
    fn pop_queued(&mut self) -> Option<Arc<Message>> {
        if self.queue.is_empty() {
            self.fill();
        }
        let m = self.queue.pop_front()?;
        self.count(&m);
        Some(m)
    }

    /// The next message; `None` when the server stops (the broadcast
    /// closes). Cancel-safe.
    pub(crate) async fn next(&mut self) -> Option<Arc<Message>> {
        loop {
            if let Some(m) = self.pop_queued() {
                return Some(m);
            }
            let due = self.held.values().map(|(t, _)| *t).min();
            let recv = self.slot.rx.recv();
            let r = match due {
                Some(due) => tokio::select! {
                    r = recv => r,
                    _ = tokio::time::sleep_until(due) => {
                        self.release_due();
                        continue;
                    }
                },
                None => recv.await,
            };
            match self.take(r) {
                Step::Send(m) => return Some(m),
                Step::Skip => {}
                Step::Closed => return None,
            }
        }
    }

    /// A message that is already waiting, without waiting: `None` when none
    /// is (or the server stops). Lets a writer put what is waiting into one
    /// write.
    pub(crate) fn try_next(&mut self) -> Option<Arc<Message>> {
        use tokio::sync::broadcast::error::TryRecvError;
        loop {
            if let Some(m) = self.pop_queued() {
                return Some(m);
            }
            let r = match self.slot.rx.try_recv() {
                Ok(m) => Ok(m),
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
            };
            match self.take(r) {
                Step::Send(m) => return Some(m),
                Step::Skip => {}
                Step::Closed => return None,
            }
        }
    }

    /// What to do with what the broadcast gave.
    fn take(&mut self, r: Result<Arc<Message>, RecvError>) -> Step {
        match r {
            Ok(m) => {
                if m.id <= self.seen_up_to || !self.filter.wants(&m) {
                    return Step::Skip;
                }
                match self.pace(m) {
                    Some(m) => {
                        self.count(&m);
                        Step::Send(m)
                    }
                    None => Step::Skip,
                }
            }
            Err(RecvError::Lagged(n)) => {
                // Fell behind its window: say how much it missed, then the
                // newest state of its devices.
                self.hub().metrics.dropped.add(n);
                self.held.clear();
                self.queue.push_back(Arc::new(Message::dropped(n, now_ms())));
                self.snapshot();
                Step::Skip
            }
            Err(RecvError::Closed) => Step::Closed,
        }
    }

    fn count(&self, _m: &Message) {
        self.hub().metrics.messages.inc();
    }

    /// Applies `max_rate`: an update goes now, or is held (replacing an
    /// older held one) until the device's next slot.
    fn pace(&mut self, m: Arc<Message>) -> Option<Arc<Message>> {
        let Some(rate) = self.filter.max_rate else { return Some(m) };
        let (Some(device), true) = (m.device, matches!(m.kind, Kind::Position | Kind::Monitoring))
        else {
            return Some(m);
        };
        let key = (device, m.kind as u8);
        let gap = Duration::from_secs_f64(1.0 / rate);
        let now = Instant::now();
        match self.last_sent.get(&key) {
            Some(last) if now < *last + gap => {
                self.held.insert(key, (*last + gap, m));
                None
            }
            _ => {
                self.last_sent.insert(key, now);
                self.held.remove(&key);
                Some(m)
            }
        }
    }

    /// Moves held updates whose slot came to the queue.
    fn release_due(&mut self) {
        let now = Instant::now();
        let due: Vec<(u32, u8)> =
            self.held.iter().filter(|(_, (t, _))| *t <= now).map(|(k, _)| *k).collect();
        for k in due {
            if let Some((_, m)) = self.held.remove(&k) {
                self.last_sent.insert(k, now);
                self.queue.push_back(m);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_refuse_naming_the_parameter() {
        let f = Filter::parse(
            "device=1,2&kind=position,event&bbox=10,40,12,50&online=true&max_rate=2&access_token=x",
        )
        .unwrap();
        assert_eq!(f.devices.as_ref().map(HashSet::len), Some(2));
        assert_eq!(f.kinds, Some(vec![Kind::Position, Kind::Event]));
        assert_eq!((f.online, f.max_rate), (Some(true), Some(2.0)));
        for (q, param) in [
            ("device=1,x", "device"),
            ("kind=positions", "kind"),
            ("bbox=1,2,3", "bbox"),
            ("bbox=0,0,200,10", "bbox"),
            ("bbox=10,0,0,10", "bbox"),
            ("online=yes", "online"),
            ("max_rate=0", "max_rate"),
            ("color=red", "color"),
        ] {
            assert_eq!(Filter::parse(q).unwrap_err().param, param, "{q}");
        }
        let f = Filter::parse("bbox=10,40,12,50").unwrap();
        assert!(f.wants_device(1, Some((11.0, 45.0)), true));
        assert!(!f.wants_device(1, Some((13.0, 45.0)), true));
        assert!(!f.wants_device(1, None, true));
    }
}
