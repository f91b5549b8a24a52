//! The four methods (baseline, Quiet-STaR, REBASE, combined) and what they share: answer
//! extraction, voting, the REBASE budget allocation, the process reward model.
pub mod allocate;
pub mod answer;
pub mod baseline;
pub mod common;
pub mod engines;
pub mod prm;
pub mod quiet_star;
pub mod rebase;
pub mod voting;
pub mod wu_number;
