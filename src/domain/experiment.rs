//! Experiments on the offer: which variant a contact gets (a hash of the experiment and
//! the contact, so a retry, a replica or a restart can never change it), and what the
//! results say. A variant's conversion rate is compared with the control's by a
//! two-proportion z-test, with a 95 % interval of the difference; before every arm has
//! reached the planned sample size the verdict is "not yet conclusive", whatever the
//! interval says, so looking early cannot end an experiment on noise.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The index of the variant `contact_id` gets in `experiment`, by the variants' weights
/// (in order): the first eight bytes of SHA-256 of the two names, reduced modulo the
/// weights' sum. `None` when the weights sum to zero.
pub fn assign(experiment: &str, contact_id: &str, weights: &[u32]) -> Option<usize> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let digest = Sha256::new()
        .chain_update(experiment.as_bytes())
        .chain_update([0u8])
        .chain_update(contact_id.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let mut point = u64::from_be_bytes(first) % total;
    for (index, weight) in weights.iter().enumerate() {
        let weight = u64::from(*weight);
        if point < weight {
            return Some(index);
        }
        point -= weight;
    }
    None
}

/// z for a two-sided 95 % interval.
pub const Z_95: f64 = 1.959_963_984_540_054;
/// z for 80 % power.
pub const Z_POWER_80: f64 = 0.841_621_233_572_914_3;

/// The standard normal distribution's CDF (erfc by Numerical Recipes' Chebyshev fit,
/// accurate to about 1e-7).
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// One arm's outcome: how many were invited, how many of them converted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Arm {
    pub invited: i64,
    pub converted: i64,
}

impl Arm {
    pub fn rate(self) -> Option<f64> {
        (self.invited > 0).then(|| self.converted as f64 / self.invited as f64)
    }

    /// The Wilson score interval of the rate at 95 %: unlike the plain normal interval
    /// it stays inside [0, 1] and is honest for few conversions.
    pub fn interval(self) -> Option<(f64, f64)> {
        let n = self.invited as f64;
        let p = self.rate()?;
        let z2 = Z_95 * Z_95;
        let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
        let half = Z_95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
        Some(((centre - half).max(0.0), (centre + half).min(1.0)))
    }
}

/// A variant against the control.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Comparison {
    /// The variant's rate minus the control's.
    pub difference: f64,
    /// Its 95 % interval (unpooled standard error).
    pub low: f64,
    pub high: f64,
    /// The test statistic (pooled standard error) and its two-sided p-value.
    pub z: f64,
    pub p_value: f64,
}

/// The two-proportion z-test of `variant` against `control`; `None` while either arm has
/// no one invited, or neither has a conversion and a non-conversion to tell them apart.
pub fn compare(control: Arm, variant: Arm) -> Option<Comparison> {
    let (p1, p2) = (control.rate()?, variant.rate()?);
    let (n1, n2) = (control.invited as f64, variant.invited as f64);
    let pooled = (control.converted + variant.converted) as f64 / (n1 + n2);
    let se_pooled = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se_pooled == 0.0 {
        return None;
    }
    let difference = p2 - p1;
    let z = difference / se_pooled;
    let se = (p1 * (1.0 - p1) / n1 + p2 * (1.0 - p2) / n2).sqrt();
    Some(Comparison {
        difference,
        low: difference - Z_95 * se,
        high: difference + Z_95 * se,
        z,
        p_value: 2.0 * (1.0 - normal_cdf(z.abs())),
    })
}

/// Invites each arm needs to detect an absolute change of `effect` from a `baseline`
/// rate with a two-sided test at 5 % and 80 % power.
pub fn planned_sample_size(baseline: f64, effect: f64) -> i64 {
    let p1 = baseline.clamp(0.0001, 0.9999);
    let p2 = (baseline + effect).clamp(0.0001, 0.9999);
    let mean = (p1 + p2) / 2.0;
    let numerator = Z_95 * (2.0 * mean * (1.0 - mean)).sqrt() + Z_POWER_80 * (p1 * (1.0 - p1) + p2 * (1.0 - p2)).sqrt();
    let delta = (p2 - p1).abs().max(1e-9);
    (numerator * numerator / (delta * delta)).ceil() as i64
}

/// What the results allow saying about a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// An arm has fewer invites than planned: keep going, whatever the interval says.
    NotYetConclusive,
    /// The interval of the difference lies above zero.
    BetterThanControl,
    /// It lies below zero.
    WorseThanControl,
    /// It contains zero.
    NoDifferenceDetected,
}

pub fn verdict(control: Arm, variant: Arm, planned: i64) -> Verdict {
    if control.invited < planned || variant.invited < planned {
        return Verdict::NotYetConclusive;
    }
    match compare(control, variant) {
        Some(c) if c.low > 0.0 => Verdict::BetterThanControl,
        Some(c) if c.high < 0.0 => Verdict::WorseThanControl,
        _ => Verdict::NoDifferenceDetected,
    }
}

impl Verdict {
    pub fn words(self) -> &'static str {
        match self {
            Verdict::NotYetConclusive => "not yet conclusive",
            Verdict::BetterThanControl => "better than control",
            Verdict::WorseThanControl => "worse than control",
            Verdict::NoDifferenceDetected => "no difference detected",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A contact's variant is a function of the experiment, the contact and the
        /// weights alone: asked again (a retry, another replica, after a restart) it is
        /// the same, and it is always one of the variants with a weight.
        #[test]
        fn a_contacts_variant_never_changes(
            experiment in "[a-z0-9_-]{1,20}",
            contact in "[0-9]{1,12}",
            weights in proptest::collection::vec(0u32..100, 1..6),
        ) {
            let first = assign(&experiment, &contact, &weights);
            for _ in 0..3 {
                prop_assert_eq!(assign(&experiment, &contact, &weights), first);
            }
            match first {
                Some(index) => prop_assert!(weights[index] > 0),
                None => prop_assert!(weights.iter().all(|w| *w == 0)),
            }
        }
    }

    #[test]
    fn assignment_is_stable_and_follows_the_weights() {
        let weights = [50, 30, 20];
        let mut counts = [0usize; 3];
        for n in 0..20_000 {
            let contact = format!("{}", 90_000 + n);
            let first = assign("bigger-reward", &contact, &weights).expect("a variant");
            assert_eq!(assign("bigger-reward", &contact, &weights), Some(first));
            counts[first] += 1;
        }
        // Within 1.5 points of the weights.
        for (count, weight) in counts.iter().zip(weights) {
            let share = *count as f64 / 20_000.0 * 100.0;
            assert!((share - f64::from(weight)).abs() < 1.5, "{counts:?}");
        }
        // Another experiment shuffles contacts independently.
        let same = (0..1000)
            .filter(|n| {
                let c = n.to_string();
                assign("a", &c, &[1, 1]) == assign("b", &c, &[1, 1])
            })
            .count();
        assert!((400..600).contains(&same), "{same}");
        assert_eq!(assign("x", "1", &[0, 0]), None);
    }

    #[test]
    fn the_normal_cdf_matches_tables() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.959_964) - 0.975).abs() < 1e-6);
        assert!((normal_cdf(-1.644_854) - 0.05).abs() < 1e-6);
        assert!((normal_cdf(2.575_829) - 0.995).abs() < 1e-6);
    }

    #[test]
    fn the_z_test_matches_textbook_cases() {
        // 200/1000 against 250/1000: pooled p 0.225, SE 0.018675, z 2.6774, p 0.0074;
        // unpooled SE sqrt(0.16/1000 + 0.1875/1000) = 0.018641, interval 0.05 ± 0.036536.
        let c = compare(
            Arm {
                invited: 1000,
                converted: 200,
            },
            Arm {
                invited: 1000,
                converted: 250,
            },
        )
        .expect("a comparison");
        assert!((c.z - 2.6774).abs() < 1e-3, "{c:?}");
        assert!((c.p_value - 0.0074).abs() < 1e-3, "{c:?}");
        assert!(
            (c.low - 0.013464).abs() < 1e-5 && (c.high - 0.086536).abs() < 1e-5,
            "{c:?}"
        );
        // 45/100 against 56/100 (a common course example): z 1.5566, p 0.1196.
        let c = compare(
            Arm {
                invited: 100,
                converted: 45,
            },
            Arm {
                invited: 100,
                converted: 56,
            },
        )
        .expect("a comparison");
        assert!((c.z - 1.5566).abs() < 1e-3, "{c:?}");
        assert!((c.p_value - 0.1196).abs() < 1e-3, "{c:?}");
        assert!(c.low < 0.0 && c.high > 0.0);
        assert_eq!(
            compare(
                Arm::default(),
                Arm {
                    invited: 5,
                    converted: 1
                }
            ),
            None
        );
    }

    #[test]
    fn wilson_intervals_and_sample_sizes_match_known_values() {
        // 10 of 100: Wilson 95 % interval [0.0552, 0.1744].
        let (low, high) = Arm {
            invited: 100,
            converted: 10,
        }
        .interval()
        .expect("an interval");
        assert!(
            (low - 0.0552).abs() < 1e-3 && (high - 0.1744).abs() < 1e-3,
            "{low} {high}"
        );
        // From 10 % to 15 % at 5 % two-sided and 80 % power: 686 per arm.
        assert_eq!(planned_sample_size(0.10, 0.05), 686);
    }

    #[test]
    fn no_verdict_before_the_planned_sample() {
        let control = Arm {
            invited: 1000,
            converted: 200,
        };
        let better = Arm {
            invited: 1000,
            converted: 250,
        };
        assert_eq!(verdict(control, better, 2000), Verdict::NotYetConclusive);
        assert_eq!(verdict(control, better, 1000), Verdict::BetterThanControl);
        assert_eq!(verdict(better, control, 1000), Verdict::WorseThanControl);
        assert_eq!(verdict(control, control, 1000), Verdict::NoDifferenceDetected);
    }
}
