//! GSM8K evaluation: data and subsets, durable per-problem results, the comparison report.
pub mod data;
pub mod manifest;
pub mod planned;
pub mod record;
pub mod report;
pub mod results;
pub mod run;
