//! `referloop setup …`: creates in the outside accounts what referloop needs, each
//! command safe to run again (what exists is checked, not recreated) and with a
//! `--dry-run` that only says what it would do. Each step ends as one line of a
//! [`Report`].

pub mod doctor;
pub mod hubspot;
pub mod stripe;
pub mod whatsapp;

/// What setup found or did about one thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Created(String),
    /// Sandbox: the call that would create it was recorded, not sent.
    Recorded(String),
    Present(String),
    /// `--dry-run`: what is missing, and the call that would create it.
    WouldCreate {
        what: String,
        call: String,
    },
    /// Exists but cannot serve: what is wrong and what to do.
    Wrong {
        what: String,
        fix: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    /// No finding blocks going live.
    pub fn ok(&self) -> bool {
        !self.findings.iter().any(|f| matches!(f, Finding::Wrong { .. }))
    }

    /// In sandbox nothing is created: what a call would have created is said as such.
    pub fn recorded_only(mut self) -> Report {
        for finding in &mut self.findings {
            if let Finding::Created(what) = finding {
                *finding = Finding::Recorded(std::mem::take(what));
            }
        }
        self
    }

    pub fn created(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| matches!(f, Finding::Created(_)))
            .count()
    }

    /// One line per finding, as printed.
    pub fn lines(&self) -> Vec<String> {
        self.findings
            .iter()
            .map(|finding| match finding {
                Finding::Created(what) => format!("✓ created  {what}"),
                Finding::Recorded(what) => {
                    format!(
                        "· would create  {what} (sandbox: the call is recorded, not sent; `referloop outbound list`)"
                    )
                }
                Finding::Present(what) => format!("✓ present  {what}"),
                Finding::WouldCreate { what, call } => format!("! missing  {what}; would call {call}"),
                Finding::Wrong { what, fix } => format!("✗ wrong    {what}: {fix}"),
            })
            .collect()
    }
}
