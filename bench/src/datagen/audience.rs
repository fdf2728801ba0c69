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
    /// Bit k: in the treatment of experiment k.
    pub(super) treatment: u8,
}

/// Users: who they are and how they listen.
pub(super) struct Audience {
    pub(super) country: Vec<u8>,
    pub(super) plan: Vec<u8>,
    pub(super) cluster: Vec<u8>,
    pub(super) device: Vec<u8>,
    pub(super) signup: Vec<i32>,
    pub(super) birth_year: Vec<i32>,
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
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for (country, plan, cluster, device, signup, birth_year, weight) in blocks.into_iter().flatten() {
        a.country.push(country);
        a.plan.push(plan);
        a.cluster.push(cluster);
        a.device.push(device);
        a.signup.push(signup);
        a.birth_year.push(birth_year);
        activity.push(weight);
    }
    let hot: Vec<UserHot> = (0..n)
        .into_par_iter()
        .map(|i| {
            let u = i as u64 + 1;
            let treatment = EXPERIMENTS.iter().enumerate().map(|(k, e)| u8::from(in_treatment(u, e.2)) << k).sum();
            UserHot { index: i as u32, cluster: a.cluster[i], device: a.device[i], country: a.country[i], treatment }
        })
        .collect();
    a.activity = AliasTable::new(&activity, |i| hot[i])
        .ok_or_else(|| DatagenError::Config("user activity weights must be positive and finite".into()))?;
    Ok(a)
}
