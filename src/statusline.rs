//! The daemon's periodic status line: what an operator tailing the log wants at a glance,
//! as gh-ost prints it — the state, how fast changes are applied, how far behind, and when
//! it will have caught up (or, during the first load, how much is copied and when it ends).

use std::time::Duration;

use crate::Lsn;
use crate::control::Shutdown;
use crate::status::{SharedStatus, State, Status};

/// One status line, from the status now and `elapsed` earlier.
pub fn line(before: &Status, now: &Status, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64().max(0.001);
    if now.state == State::Backfill
        && let Some(load) = &now.backfill
    {
        let eta = load
            .eta_seconds
            .map_or("unknown".to_owned(), |s| human_seconds(s as f64));
        return format!(
            "first load: {} ({:.1}%, {} of {} rows), ETA {eta}, lag {}",
            load.step,
            load.percent,
            thousands(load.rows_done),
            thousands(load.rows_total),
            human_seconds(now.lag_seconds)
        );
    }
    // Counters restart with each session: a drop is a new session, counted from zero.
    let applied = |b: u64, n: u64| if n >= b { n - b } else { n };
    let changes = applied(before.counters.changes, now.counters.changes) as f64 / seconds;
    let backlog = now.lag_bytes.unwrap_or(0);
    let mut text = format!(
        "{}: {} changes/s applied, lag {}, backlog {}",
        state_word(now.state),
        thousands(changes.round() as u64),
        human_seconds(now.lag_seconds),
        human_bytes(backlog)
    );
    let processed = |s: &Status| {
        s.processed_lsn
            .as_deref()
            .and_then(|l| l.parse::<Lsn>().ok())
    };
    let eta = match (processed(before), processed(now)) {
        _ if backlog == 0 => "caught up".to_owned(),
        (Some(b), Some(n)) if n > b => {
            let rate = n.bytes_since(b) as f64 / seconds;
            format!("caught up in {}", human_seconds(backlog as f64 / rate))
        }
        _ if now.state == State::Paused => "paused".to_owned(),
        _ => "not catching up".to_owned(),
    };
    text.push_str(&format!(", {eta}"));
    if let Some(pending) = now.dead_letters_pending.filter(|p| *p > 0) {
        text.push_str(&format!(", {pending} dead letters pending"));
    }
    if now.state == State::Failed
        && let Some(error) = &now.last_error
    {
        text.push_str(&format!(": {error}"));
    }
    text
}

fn state_word(state: State) -> &'static str {
    match state {
        State::Starting => "starting",
        State::Standby => "standby",
        State::Backfill => "first load",
        State::Streaming => "streaming",
        State::Paused => "paused",
        State::Reconnecting => "reconnecting",
        State::Failed => "FAILED",
        State::Stopped => "stopping",
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Seconds as people read them: `0.21 s`, `14 s`, `3 min 20 s`, `2 h 5 min`.
pub fn human_seconds(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.2} s")
    } else if s < 60.0 {
        format!("{s:.0} s")
    } else if s < 3600.0 {
        let s = s.round() as u64;
        format!("{} min {} s", s / 60, s % 60)
    } else {
        let m = (s / 60.0).round() as u64;
        format!("{} h {} min", m / 60, m % 60)
    }
}

/// Bytes in binary units: `512 B`, `560 kB`, `1.2 MB`, `3.4 GB` (kB = 1024 bytes).
pub fn human_bytes(b: u64) -> String {
    const K: f64 = 1024.0;
    let f = b as f64;
    if f < K {
        format!("{b} B")
    } else if f < K * K {
        format!("{:.0} kB", f / K)
    } else if f < K * K * K {
        format!("{:.1} MB", f / (K * K))
    } else {
        format!("{:.1} GB", f / (K * K * K))
    }
}

/// Logs a status line every `every` until shutdown.
pub async fn log_periodically(status: SharedStatus, every: Duration, mut shutdown: Shutdown) {
    if every.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut before = (status.get(), std::time::Instant::now());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = status.get();
        tracing::info!("{}", line(&before.0, &now, before.1.elapsed()));
        before = (now, std::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::BackfillProgress;

    fn streaming(changes: u64, lsn: &str, lag_bytes: u64, lag_seconds: f64) -> Status {
        let mut s = Status {
            state: State::Streaming,
            processed_lsn: Some(lsn.to_owned()),
            lag_bytes: Some(lag_bytes),
            lag_seconds,
            ..Status::default()
        };
        s.counters.changes = changes;
        s
    }

    #[test]
    fn a_streaming_line_gives_rate_lag_backlog_and_when_it_catches_up() {
        let before = streaming(1_000, "0/1000000", 4 << 20, 3.0);
        let now = streaming(31_000, "0/1A00000", 2 << 20, 1.5);
        // 30,000 changes in 10 s; 10 MiB processed in 10 s, 2 MiB left.
        assert_eq!(
            line(&before, &now, Duration::from_secs(10)),
            "streaming: 3,000 changes/s applied, lag 1.50 s, backlog 2.0 MB, caught up in 2.00 s"
        );
        let idle = streaming(31_000, "0/1A00000", 0, 0.0);
        assert_eq!(
            line(&now, &idle, Duration::from_secs(30)),
            "streaming: 0 changes/s applied, lag 0.00 s, backlog 0 B, caught up"
        );
    }

    #[test]
    fn paused_failed_and_restarted_sessions_read_right() {
        let before = streaming(50_000, "0/1000000", 1 << 20, 2.0);
        let mut paused = streaming(50_000, "0/1000000", 3 << 20, 75.0);
        paused.state = State::Paused;
        paused.dead_letters_pending = Some(4);
        assert_eq!(
            line(&before, &paused, Duration::from_secs(30)),
            "paused: 0 changes/s applied, lag 1 min 15 s, backlog 3.0 MB, paused, 4 dead \
             letters pending"
        );
        // A new session's counters start again from zero.
        let restarted = streaming(600, "0/1100000", 1024, 0.5);
        assert!(
            line(&before, &restarted, Duration::from_secs(60))
                .starts_with("streaming: 10 changes/s applied")
        );
        let mut failed = restarted.clone();
        failed.state = State::Failed;
        failed.last_error = Some("column contacts.tags is gone".into());
        assert!(
            line(&restarted, &failed, Duration::from_secs(30))
                .ends_with("not catching up: column contacts.tags is gone")
        );
    }

    #[test]
    fn a_first_load_line_gives_its_step_share_and_eta() {
        let mut progress = BackfillProgress::new(&[("customers", 80_000), ("leads", 20_000)]);
        progress.advance(
            "customers",
            40_000,
            progress.started_at + chrono::Duration::seconds(20),
        );
        let now = Status {
            state: State::Backfill,
            backfill: Some(progress),
            lag_seconds: 21.0,
            ..Status::default()
        };
        assert_eq!(
            line(&Status::default(), &now, Duration::from_secs(30)),
            "first load: copying customers (40.0%, 40,000 of 100,000 rows), ETA 30 s, lag 21 s"
        );
    }

    #[test]
    fn figures_read_like_people_write_them() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(human_seconds(0.214), "0.21 s");
        assert_eq!(human_seconds(59.4), "59 s");
        assert_eq!(human_seconds(200.0), "3 min 20 s");
        assert_eq!(human_seconds(7500.0), "2 h 5 min");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(560 * 1024), "560 kB");
        assert_eq!(human_bytes(3 << 30), "3.0 GB");
    }
}
