//! The users: country, plan, taste cluster, device, signup, and their heavy-tailed activity.

#[allow(unused_imports)]
use super::*;

/// What the plays loop needs of a user, in 8 bytes.
#[derive(Clone, Copy)]
pub(super) struct UserHot {
    /// 0-based user index.
    pub(super) index: u32,
    pub(super) cluster: u8,
    pub(super) device: u8,
    pub(super) country: u8,
    /// Bit k < 2: in the treatment of experiment k; bits 2..8: the user's skip propensity level.
    pub(super) traits: u8,
}

/// Levels of a user's skip propensity, in the six high bits of [`UserHot::traits`].
const SKIP_LEVELS: u8 = 64;
/// Spread of the skip propensity: its log is normal with this standard deviation (cut at ±2.5 sd).
const SKIP_LOG_SD: f64 = 0.5;
const _: () = assert!(EXPERIMENTS.len() <= 2, "UserHot::traits holds two experiment bits");

impl UserHot {
    pub(super) fn in_treatment_of(&self, experiment: usize) -> bool {
        self.traits >> experiment & 1 == 1
    }

    /// Multiplies the user's skip probability: log-normal with mean ≈ 1, so users differ in how
    /// often they skip (what makes plays of one user correlated, and pre-period skip rates
    /// informative for CUPED).
    pub(super) fn skip_factor(&self) -> f64 {
        let z = (self.traits >> 2) as f64 / (SKIP_LEVELS - 1) as f64 * 5.0 - 2.5;
        (SKIP_LOG_SD * z - SKIP_LOG_SD * SKIP_LOG_SD / 2.0).exp()
    }
}

/// The propensity level of a standard normal draw.
fn skip_level(z: f64) -> u8 {
    (((z + 2.5) / 5.0 * (SKIP_LEVELS - 1) as f64).round()).clamp(0.0, (SKIP_LEVELS - 1) as f64) as u8
}

/// Users: who they are and how they listen.
pub(super) struct Audience {
    pub(super) country: Vec<u8>,
    pub(super) plan: Vec<u8>,
    pub(super) cluster: Vec<u8>,
    pub(super) device: Vec<u8>,
    pub(super) signup: Vec<i32>,
    pub(super) birth_year: Vec<i32>,
    pub(super) skip_level: Vec<u8>,
    /// Heavy-tailed activity over users, drawing what the plays loop reads of the user.
    pub(super) activity: AliasTable<UserHot>,
}

pub(super) fn build_audience(config: &Config, scale: &Scale) -> Result<Audience> {
    let n = scale.users as usize;
    let country_w: Vec<f64> = COUNTRIES.iter().map(|c| c.1).collect();
    let plan_w: Vec<f64> = PLANS.iter().map(|p| p.1).collect();
    let pareto: Pareto<f64> = Pareto::new(1.0, 1.2).map_err(|e| DatagenError::Config(e.to_string()))?;
    let mut a = Audience {
        country: Vec::with_capacity(n),
        plan: Vec::with_capacity(n),
        cluster: Vec::with_capacity(n),
        device: Vec::with_capacity(n),
        signup: Vec::with_capacity(n),
        birth_year: Vec::with_capacity(n),
        skip_level: Vec::with_capacity(n),
        activity: AliasTable { entries: Vec::new() },
    };
    let mut activity = Vec::with_capacity(n);
    let epoch_2015 = NaiveDate::from_ymd_opt(2015, 1, 1).unwrap_or_default().num_days_from_ce();
    let last_signup = first_day().num_days_from_ce() - 1;
    // Users come in fixed blocks, each with its own stream: parallel, and the same whatever the
    // thread count.
    let blocks: Vec<_> = (0..n.div_ceil(USER_BLOCK))
        .into_par_iter()
        .map(|b| {
            let mut rng = stream(config.seed, USER_STREAMS + b as u64);
            let rows = USER_BLOCK.min(n - b * USER_BLOCK);
            (0..rows)
                .map(|_| {
                    (
                        weighted_pick(&mut rng, &country_w) as u8,
                        weighted_pick(&mut rng, &plan_w) as u8,
                        rng.random_range(0..CLUSTERS) as u8,
                        rng.random_range(0..DEVICES.len()) as u8,
                        rng.random_range(epoch_2015..=last_signup) - 719_163,
                        rng.random_range(1950..=2010),
                        pareto.sample(&mut rng).min(1_000.0),
                        skip_level(StandardNormal.sample(&mut rng)),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for (country, plan, cluster, device, signup, birth_year, weight, skip) in blocks.into_iter().flatten() {
        a.country.push(country);
        a.plan.push(plan);
        a.cluster.push(cluster);
        a.device.push(device);
        a.signup.push(signup);
        a.birth_year.push(birth_year);
        a.skip_level.push(skip);
        activity.push(weight);
    }
    let hot: Vec<UserHot> = (0..n)
        .into_par_iter()
        .map(|i| {
            let u = i as u64 + 1;
            let treatment: u8 = EXPERIMENTS.iter().enumerate().map(|(k, e)| u8::from(in_treatment(u, e.2)) << k).sum();
            let traits = treatment | a.skip_level[i] << 2;
            UserHot { index: i as u32, cluster: a.cluster[i], device: a.device[i], country: a.country[i], traits }
        })
        .collect();
    a.activity = AliasTable::new(&activity, |i| hot[i])
        .ok_or_else(|| DatagenError::Config("user activity weights must be positive and finite".into()))?;
    Ok(a)
}
