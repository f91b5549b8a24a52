//! GSM8K evaluation: data and subsets, durable per-problem results, the comparison report.
pub mod record;
pub mod report;
