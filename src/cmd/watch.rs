//! `leadsync status [--watch]`: the daemon's state at a glance, read from its `/status`;
//! with `--watch`, a live terminal view redrawn every second with the lag and the
//! throughput of the last minutes as sparklines.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::status::{State, Status};
use crate::statusline::{human_bytes, human_seconds, thousands};

/// Samples the sparklines show (one per refresh).
pub const HISTORY: usize = 60;

/// What the view remembers between refreshes.
#[derive(Debug, Default)]
pub struct History {
    lag_seconds: VecDeque<f64>,
    applied_per_second: VecDeque<f64>,
    last: Option<(Status, Instant)>,
}

impl History {
    /// Adds the status read `at`.
    pub fn push(&mut self, status: Status, at: Instant) {
        let rate = match &self.last {
            Some((before, then)) => {
                let seconds = at.duration_since(*then).as_secs_f64().max(0.001);
                let (b, n) = (before.counters.changes, status.counters.changes);
                // A new session counts from zero.
                (if n >= b { n - b } else { n }) as f64 / seconds
            }
            None => 0.0,
        };
        for (series, value) in [
            (&mut self.lag_seconds, status.lag_seconds),
            (&mut self.applied_per_second, rate),
        ] {
            series.push_back(value);
            if series.len() > HISTORY {
                series.pop_front();
            }
        }
        self.last = Some((status, at));
    }
}

/// `values` as a line of block characters, the highest one full.
pub fn sparkline(values: &VecDeque<f64>) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().fold(0.0, f64::max);
    values
        .iter()
        .map(|v| {
            if max <= 0.0 {
                BARS[0]
            } else {
                BARS[((v / max) * 7.0).round().clamp(0.0, 7.0) as usize]
            }
        })
        .collect()
}

/// One screen of the view.
pub fn render(history: &History, from: &str) -> String {
    let mut out = String::new();
    let Some((now, _)) = &history.last else {
        return format!("no answer from leadsync at {from} yet\n");
    };
    let _ = writeln!(
        out,
        "leadsync at {from} — slot {} — {}",
        now.slot,
        state_word(now.state)
    );
    let max = |s: &VecDeque<f64>| s.iter().copied().fold(0.0, f64::max);
    let _ = writeln!(
        out,
        "lag       {:>12}  {}  max {}",
        human_seconds(now.lag_seconds),
        sparkline(&history.lag_seconds),
        human_seconds(max(&history.lag_seconds))
    );
    let rate = history.applied_per_second.back().copied().unwrap_or(0.0);
    let _ = writeln!(
        out,
        "applied   {:>10}/s  {}  max {}/s",
        thousands(rate.round() as u64),
        sparkline(&history.applied_per_second),
        thousands(max(&history.applied_per_second).round() as u64)
    );
    let _ = writeln!(
        out,
        "backlog   {:>12}  processed {}  source {}",
        now.lag_bytes.map_or("-".into(), human_bytes),
        now.processed_lsn.as_deref().unwrap_or("-"),
        now.source_lsn.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        out,
        "totals    {} changes, {} transactions this session; {} dead letters pending",
        thousands(now.counters.changes),
        thousands(now.counters.transactions),
        now.dead_letters_pending.map_or("-".into(), thousands)
    );
    if let Some(load) = &now.backfill {
        let _ = writeln!(
            out,
            "first load {:.1}% ({} of {} rows), {}, ETA {}",
            load.percent,
            thousands(load.rows_done),
            thousands(load.rows_total),
            load.step,
            load.eta_seconds
                .map_or("unknown".into(), |s| human_seconds(s as f64))
        );
        for t in &load.tables {
            let share = if t.total == 0 {
                100.0
            } else {
                t.done as f64 * 100.0 / t.total as f64
            };
            let filled = (share / 5.0).round() as usize;
            let _ = writeln!(
                out,
                "  {:<26} [{}{}] {:>5.1}%",
                t.table,
                "=".repeat(filled.min(20)),
                " ".repeat(20 - filled.min(20)),
                share
            );
        }
    }
    if let Some(error) = now
        .last_error
        .as_deref()
        .filter(|_| now.state == State::Failed)
    {
        let _ = writeln!(out, "FAILED: {error}");
        let _ = writeln!(out, "once fixed: leadsync ctl retry (or restart)");
    }
    crate::text::fit(&out)
}

fn state_word(state: State) -> &'static str {
    match state {
        State::Starting => "starting",
        State::Standby => "standby (another instance applies)",
        State::Backfill => "first load",
        State::Streaming => "streaming",
        State::Paused => "PAUSED",
        State::Reconnecting => "reconnecting",
        State::Failed => "FAILED",
        State::Stopped => "stopping",
    }
}

/// Reads `/status` at `addr`.
pub async fn read(addr: SocketAddr) -> anyhow::Result<Status> {
    let (head, body) = crate::http::fetch(addr, "/status", Duration::from_secs(2))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "no leadsync answers at {addr} ({e}): is `leadsync run` running, and is \
                 metrics.listen (or --from) its address?"
            )
        })?;
    if !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!(
            "leadsync at {addr} answered {}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(serde_json::from_str(&body)?)
}

/// Prints the view once, or (`watch`) every `every` until Ctrl-C or `frames` screens.
pub async fn run(
    addr: SocketAddr,
    watch: bool,
    every: Duration,
    frames: Option<u64>,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let from = addr.to_string();
    let mut history = History::default();
    let redraw = std::io::stdout().is_terminal();
    let mut shown = 0u64;
    loop {
        history.push(read(addr).await?, Instant::now());
        if !watch {
            print!("{}", render(&history, &from));
            return Ok(());
        }
        let screen = render(&history, &from);
        if redraw {
            // Home, clear, then the screen.
            println!("\x1b[H\x1b[2J{screen}(Ctrl-C to quit)");
        } else {
            println!("{screen}");
        }
        shown += 1;
        if frames.is_some_and(|f| shown >= f) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(changes: u64, lag: f64) -> Status {
        let mut s = Status {
            state: State::Streaming,
            slot: "leadsync".into(),
            lag_seconds: lag,
            lag_bytes: Some(573_440),
            processed_lsn: Some("0/34FD7F0".into()),
            source_lsn: Some("0/3500000".into()),
            dead_letters_pending: Some(4),
            ..Status::default()
        };
        s.counters.changes = changes;
        s
    }

    #[test]
    fn sparklines_scale_to_their_highest_value() {
        let values: VecDeque<f64> = [0.0, 1.0, 2.0, 4.0, 8.0].into_iter().collect();
        assert_eq!(sparkline(&values), "▁▂▃▅█");
        let flat: VecDeque<f64> = [0.0, 0.0].into_iter().collect();
        assert_eq!(sparkline(&flat), "▁▁");
    }

    #[test]
    fn the_view_shows_rate_lag_backlog_and_their_history() {
        let mut history = History::default();
        let t0 = Instant::now();
        history.push(status(0, 0.2), t0);
        history.push(status(1_000, 1.6), t0 + Duration::from_secs(1));
        history.push(status(3_000, 0.4), t0 + Duration::from_secs(2));
        let screen = render(&history, "127.0.0.1:9187");
        assert_eq!(
            screen,
            "leadsync at 127.0.0.1:9187 — slot leadsync — streaming\n\
             lag             0.40 s  ▂█▃  max 1.60 s\n\
             applied        2,000/s  ▁▅█  max 2,000/s\n\
             backlog         560 kB  processed 0/34FD7F0  source 0/3500000\n\
             totals    3,000 changes, 0 transactions this session; 4 dead letters pending\n"
        );
        assert!(
            screen
                .lines()
                .all(|l| l.chars().count() <= crate::text::WIDTH)
        );
    }

    #[test]
    fn the_history_keeps_the_last_minute_and_a_new_session_counts_from_zero() {
        let mut history = History::default();
        let t0 = Instant::now();
        for i in 0..(HISTORY as u64 + 10) {
            history.push(status(i * 100, 0.0), t0 + Duration::from_secs(i));
        }
        assert_eq!(history.applied_per_second.len(), HISTORY);
        history.push(
            status(50, 0.0),
            t0 + Duration::from_secs(HISTORY as u64 + 10),
        );
        assert_eq!(history.applied_per_second.back(), Some(&50.0));
    }
}
