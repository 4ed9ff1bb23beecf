//! The rows of `wecom-acq export` and how they are written: CSV (RFC 4180 quoting by the
//! `csv` crate) or JSON lines with the same keys, one row at a time so nothing is held;
//! and the statistics windows a span of days is split into.

use std::io::Write;

use serde::Serialize;

use crate::reconcile::plan::{StatsWindow, stats_window};
use crate::wecom::types::Customer;

/// WeCom keeps statistics this many days (A7).
pub const MAX_STATISTICS_DAYS: u32 = 180;
/// The longest span of one A7 call, in days.
pub const MAX_WINDOW_DAYS: u32 = 30;
const DAY_SECS: i64 = 86_400;

/// Output format.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Comma-separated values with a header line.
    #[default]
    Csv,
    /// One JSON object per line, the CSV header's names as keys.
    Jsonl,
}

/// One customer who came through a link (A6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CustomerRow {
    pub link_id: String,
    pub link_name: String,
    pub external_userid: String,
    pub userid: String,
    /// 0 not yet messaged, 1 messaged, 2 unknown (as WeCom reports it).
    pub chat_status: u8,
    /// The customer_channel as WeCom reports it (empty when none).
    pub state: String,
}

impl CustomerRow {
    pub const HEADER: [&'static str; 6] = [
        "link_id",
        "link_name",
        "external_userid",
        "userid",
        "chat_status",
        "state",
    ];

    pub fn new(link_id: &str, link_name: &str, customer: Customer) -> Self {
        CustomerRow {
            link_id: link_id.to_string(),
            link_name: link_name.to_string(),
            external_userid: customer.external_userid,
            userid: customer.userid,
            chat_status: customer.chat_status,
            state: customer.state,
        }
    }
}

/// Clicks and new customers of one link over one window (A7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatisticsRow {
    pub link_id: String,
    pub link_name: String,
    /// First day, YYYY-MM-DD China time.
    pub from: String,
    /// Last day (included).
    pub to: String,
    pub clicks: u64,
    pub new_customers: u64,
}

impl StatisticsRow {
    pub const HEADER: [&'static str; 6] = [
        "link_id",
        "link_name",
        "from",
        "to",
        "clicks",
        "new_customers",
    ];
}

/// The last `days` whole China-time days up to today, oldest first, in windows of at most
/// 30 days (one A7 call each). More than 180 days is refused: WeCom keeps no older data.
pub fn statistics_windows(now_unix: i64, days: u32) -> Result<Vec<StatsWindow>, String> {
    if days == 0 || days > MAX_STATISTICS_DAYS {
        return Err(format!(
            "--days {days} is out of range: WeCom keeps statistics for the last \
             {MAX_STATISTICS_DAYS} days, so ask for 1 to {MAX_STATISTICS_DAYS}"
        ));
    }
    let mut windows = Vec::new();
    let mut newer_days = 0;
    while newer_days < days {
        let length = (days - newer_days).min(MAX_WINDOW_DAYS);
        // The window ending `newer_days` days before today.
        windows.push(stats_window(
            now_unix - i64::from(newer_days) * DAY_SECS,
            length,
        ));
        newer_days += length;
    }
    windows.reverse();
    Ok(windows)
}

/// Writes rows as they come; CSV gets its header first, even when no row follows.
pub struct RowWriter<W: Write> {
    inner: Inner<W>,
    rows: u64,
}

enum Inner<W: Write> {
    Csv(Box<csv::Writer<W>>),
    Jsonl(W),
}

/// A row that could not be written (the output closed, the disk full).
#[derive(Debug, thiserror::Error)]
#[error("writing the output failed: {0}")]
pub struct WriteError(String);

impl From<csv::Error> for WriteError {
    fn from(e: csv::Error) -> Self {
        WriteError(e.to_string())
    }
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> Self {
        WriteError(e.to_string())
    }
}

impl<W: Write> RowWriter<W> {
    pub fn new(out: W, format: Format, header: &[&str]) -> Result<Self, WriteError> {
        let inner = match format {
            Format::Csv => {
                let mut csv = csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(out);
                csv.write_record(header)?;
                Inner::Csv(Box::new(csv))
            }
            Format::Jsonl => Inner::Jsonl(out),
        };
        Ok(RowWriter { inner, rows: 0 })
    }

    pub fn write<R: Serialize>(&mut self, row: &R) -> Result<(), WriteError> {
        match &mut self.inner {
            Inner::Csv(csv) => csv.serialize(row)?,
            Inner::Jsonl(out) => {
                serde_json::to_writer(&mut *out, row).map_err(|e| WriteError(e.to_string()))?;
                out.write_all(b"\n")?;
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Flushes and gives the output back.
    pub fn finish(self) -> Result<W, WriteError> {
        match self.inner {
            Inner::Csv(csv) => csv
                .into_inner()
                .map_err(|e| WriteError(e.error().to_string())),
            Inner::Jsonl(mut out) => {
                out.flush()?;
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::plan::CHINA_OFFSET_SECS;

    fn customer(external: &str, state: &str) -> Customer {
        Customer {
            external_userid: external.into(),
            userid: "zhangsan".into(),
            chat_status: 1,
            state: state.into(),
            add_time: None,
        }
    }

    fn text(writer: RowWriter<Vec<u8>>) -> String {
        String::from_utf8(writer.finish().unwrap()).unwrap()
    }

    #[test]
    fn csv_quotes_awkward_values_and_keeps_the_header_order() {
        let mut w = RowWriter::new(Vec::new(), Format::Csv, &CustomerRow::HEADER).unwrap();
        w.write(&CustomerRow::new(
            "cawc1",
            "Big, \"SALE\"\nline 2",
            customer("wm1", "官网首页,=1+2"),
        ))
        .unwrap();
        assert_eq!(
            text(w),
            "link_id,link_name,external_userid,userid,chat_status,state\n\
             cawc1,\"Big, \"\"SALE\"\"\nline 2\",wm1,zhangsan,1,\"官网首页,=1+2\"\n"
        );
        let empty = RowWriter::new(Vec::new(), Format::Csv, &StatisticsRow::HEADER).unwrap();
        assert_eq!(
            text(empty),
            "link_id,link_name,from,to,clicks,new_customers\n"
        );
    }

    #[test]
    fn jsonl_has_the_header_names_as_keys() {
        let mut w = RowWriter::new(Vec::new(), Format::Jsonl, &CustomerRow::HEADER).unwrap();
        w.write(&CustomerRow::new("c", "n\"x", customer("wm1", "")))
            .unwrap();
        w.write(&StatisticsRow {
            link_id: "c".into(),
            link_name: "n".into(),
            from: "2026-01-01".into(),
            to: "2026-01-30".into(),
            clicks: 3,
            new_customers: 2,
        })
        .unwrap();
        assert_eq!(w.rows(), 2);
        let out = text(w);
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let keys: Vec<&String> = lines[0].as_object().unwrap().keys().collect();
        let mut header = CustomerRow::HEADER.to_vec();
        header.sort_unstable();
        let mut keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(keys, header);
        assert_eq!(lines[0]["link_name"], "n\"x");
        assert_eq!(lines[1]["new_customers"], 2);
    }

    #[test]
    fn windows_cover_the_days_oldest_first_at_most_30_each() {
        // 2026-11-24 01:00 China time.
        let now = 1_795_453_200 + 17 * 3600 - 1_795_453_200 % 86_400;
        let windows = statistics_windows(now, 75).unwrap();
        let spans: Vec<(&str, &str, u32)> = windows
            .iter()
            .map(|w| (w.from.as_str(), w.to.as_str(), w.days))
            .collect();
        assert_eq!(
            spans,
            vec![
                ("2026-09-11", "2026-09-25", 15),
                ("2026-09-26", "2026-10-25", 30),
                ("2026-10-26", "2026-11-24", 30),
            ]
        );
        // Contiguous whole days: each window starts the second after the one before ends.
        for pair in windows.windows(2) {
            assert_eq!(pair[0].end_time + 1, pair[1].start_time);
        }
        for w in &windows {
            assert_eq!((w.start_time + CHINA_OFFSET_SECS) % DAY_SECS, 0);
            assert_eq!((w.end_time + 1 + CHINA_OFFSET_SECS) % DAY_SECS, 0);
        }
        assert_eq!(statistics_windows(now, 30).unwrap().len(), 1);
        assert_eq!(statistics_windows(now, 31).unwrap().len(), 2);
        let all = statistics_windows(now, 180).unwrap();
        assert_eq!(all.len(), 6);
        assert_eq!(all.iter().map(|w| w.days).sum::<u32>(), 180);
        assert!(statistics_windows(now, 181).unwrap_err().contains("180"));
        assert!(statistics_windows(now, 0).is_err());
    }
}
