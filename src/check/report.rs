//! What `check` found: one entry per step, pass / warn / fail / skip, with its
//! evidence and a one-line fix, printed as text for people or one JSON object
//! for CI jobs.

use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Verdict {
    Pass,
    Skip,
    Warn,
    Fail,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Skip => "skip",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// One step of the walk.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub number: u8,
    pub title: &'static str,
    pub verdict: Verdict,
    /// What was seen: statuses, headers, timings, values.
    pub evidence: Vec<String>,
    /// What was wrong, one line each (warnings and failures).
    pub problems: Vec<String>,
    /// The one-line fix for the worst problem.
    pub fix: Option<String>,
}

impl Step {
    pub(crate) fn new(number: u8, title: &'static str) -> Self {
        Step {
            number,
            title,
            verdict: Verdict::Pass,
            evidence: Vec::new(),
            problems: Vec::new(),
            fix: None,
        }
    }

    pub(crate) fn saw(&mut self, line: impl Into<String>) {
        self.evidence.push(line.into());
    }

    /// A problem STS would refuse; the first failure's fix is the step's.
    pub(crate) fn fail(&mut self, problem: impl Into<String>, fix: impl Into<String>) {
        self.problem(Verdict::Fail, problem.into(), fix.into());
    }

    /// A problem worth fixing that STS lets through.
    pub(crate) fn warn(&mut self, problem: impl Into<String>, fix: impl Into<String>) {
        self.problem(Verdict::Warn, problem.into(), fix.into());
    }

    fn problem(&mut self, verdict: Verdict, problem: String, fix: String) {
        if verdict > self.verdict {
            self.verdict = verdict;
            self.fix = Some(fix);
        } else if self.fix.is_none() {
            self.fix = Some(fix);
        }
        self.problems.push(problem);
    }

    pub(crate) fn skipped(number: u8, title: &'static str, why: impl Into<String>) -> Self {
        let mut step = Step::new(number, title);
        step.verdict = Verdict::Skip;
        step.evidence.push(why.into());
        step
    }

    pub(crate) fn failed(&self) -> bool {
        self.verdict == Verdict::Fail
    }

    fn to_json(&self) -> Value {
        json!({
            "step": self.number,
            "title": self.title,
            "status": self.verdict.as_str(),
            "evidence": self.evidence,
            "problems": self.problems,
            "fix": self.fix,
        })
    }
}

/// Everything `check` prints.
#[derive(Debug, Default)]
pub struct Report {
    pub(crate) issuer: String,
    pub(crate) steps: Vec<Step>,
    /// The token's claims (never the token), when one was given.
    pub(crate) claims: Option<Value>,
    /// A trust policy for the token's `sub` and `aud`.
    pub(crate) trust_policy: Option<Value>,
}

impl Report {
    /// 0 when nothing failed (warnings allowed), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.steps.iter().any(Step::failed))
    }

    pub fn to_json(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "ok": self.exit_code() == 0,
            "steps": self.steps.iter().map(Step::to_json).collect::<Vec<_>>(),
            "claims": self.claims,
            "trust_policy": self.trust_policy,
        })
    }

    pub fn to_text(&self) -> String {
        let mut out = format!("check {}\n", self.issuer);
        for step in &self.steps {
            out.push_str(&format!(
                "\n{:<4} {}. {}\n",
                step.verdict.as_str().to_uppercase(),
                step.number,
                step.title
            ));
            for line in &step.evidence {
                out.push_str(&format!("       {line}\n"));
            }
            for line in &step.problems {
                out.push_str(&format!("     ! {line}\n"));
            }
            if let Some(fix) = &step.fix {
                out.push_str(&format!("   fix: {fix}\n"));
            }
        }
        if let Some(claims) = &self.claims {
            out.push_str(&format!(
                "\nclaims usable in IAM conditions and bound claims:\n{claims:#}\n"
            ));
        }
        if let Some(policy) = &self.trust_policy {
            out.push_str(&format!("\ntrust policy for this sub and aud:\n{policy:#}\n"));
        }
        let count = |v: Verdict| self.steps.iter().filter(|s| s.verdict == v).count();
        out.push_str(&format!(
            "\n{} passed, {} warned, {} failed, {} skipped: {}\n",
            count(Verdict::Pass),
            count(Verdict::Warn),
            count(Verdict::Fail),
            count(Verdict::Skip),
            if self.exit_code() == 0 {
                "STS can verify tokens of this issuer"
            } else {
                "STS would refuse (see the failed steps)"
            }
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_problem_sets_the_verdict_and_the_fix() {
        let mut step = Step::new(4, "caching");
        step.warn("no max-age", "send max-age");
        assert_eq!(
            (step.verdict, step.fix.as_deref()),
            (Verdict::Warn, Some("send max-age"))
        );
        step.fail("max-age=0", "send public, max-age=3600");
        step.warn("another", "later fix");
        assert_eq!(step.verdict, Verdict::Fail);
        assert_eq!(step.fix.as_deref(), Some("send public, max-age=3600"));
        assert_eq!(step.problems.len(), 3);
        let report = Report {
            issuer: "https://g.example".into(),
            steps: vec![step, Step::skipped(5, "token", "no --token")],
            ..Report::default()
        };
        assert_eq!(report.exit_code(), 1);
        assert_eq!(report.to_json()["steps"][0]["status"], "fail");
        assert_eq!(report.to_json()["steps"][1]["status"], "skip");
        assert!(report.to_text().contains("FAIL 4. caching"), "{}", report.to_text());
    }
}
