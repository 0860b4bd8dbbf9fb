//! `fieldtrack plan`: what a reconcile would do now, without doing it, with a unified diff
//! of the nginx upstream file. Exit 0 in sync, 3 when it would change something.

use super::CliError;
use crate::config::{Config, Pause, Promotion, RuntimeKind};
use crate::desired::Desired;
use crate::nginx_conf::upstream::{preview_name, render, render_preview, render_servers};
use crate::observe::Observed;
use crate::plan::{plan, preview, Action, Verdict};

pub async fn run(cfg: Config) -> Result<u8, CliError> {
    // Unlike a reconcile, plan writes nothing, not even `invalid` into status.json.
    let desired = Desired::load(&cfg.desired_file, &cfg).map_err(CliError::Desired)?;
    let ctx = super::context(cfg).await?;
    let observed = ctx
        .observe()
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?;
    // What `fieldtrack reconcile` would do: it asks for a retry by hand, so a failed
    // generation is attempted again.
    let asked = Observed {
        retry_asked: Some(desired.generation.clone()),
        ..observed.clone()
    };
    let plan = plan(&ctx.cfg, &desired, &asked);
    let live = observed.live(&ctx.cfg);
    println!(
        "Desired : {} (generation {})",
        desired.image, desired.generation
    );
    match live {
        Some(c) => println!(
            "Live    : {} {} ({})",
            c.color.map(|c| c.to_string()).unwrap_or_default(),
            c.image,
            c.name
        ),
        None => println!("Live    : nothing"),
    }
    // Why a container that runs the desired image is replaced all the same: a setting
    // changed in the config, or (Swarm) a service edited by hand.
    for c in observed.containers.iter() {
        if let Some(drift) = &c.drift {
            println!("Drift   : {} {drift}", c.name);
        }
    }
    if observed.failed_generation.as_deref() == Some(desired.generation.as_str()) {
        println!("Note    : this generation failed before; the daemon waits for a change, a reconcile by hand retries it");
    }
    match plan.verdict {
        Verdict::InSync => {
            println!("In sync: nothing to do.");
            return Ok(0);
        }
        Verdict::Paused => {
            println!("Paused: the desired file says paused = true; nothing would be changed.");
            return Ok(0);
        }
        Verdict::Unclear { reason } => return Err(CliError::Failed(reason)),
        Verdict::AlreadyFailed | Verdict::Converge => {}
    }
    println!("\nPlan:");
    for (i, action) in plan.actions.iter().enumerate() {
        println!("  {}. {action}", i + 1);
    }
    let keep = ctx.cfg.rollout.keep_previous;
    if !keep.is_zero() && plan.target().is_some() {
        println!(
            "  (rollout.keep_previous = {}: the old color is kept running out of nginx for that long after the drain, then removed)",
            humantime::format_duration(keep)
        );
    }
    if let (Some(canary), Some(_), Some(_)) = (&ctx.cfg.canary, plan.target(), live) {
        // An image that served before (the history names it) goes back at once.
        if !observed
            .history
            .contains(&desired.image.as_written().to_string())
        {
            let steps: Vec<String> = canary
                .steps
                .iter()
                .map(|s| match s.pause {
                    Pause::For(d) => format!("{}% for {}", s.weight, humantime::format_duration(d)),
                    Pause::Manual => format!("{}% until fieldtrack promote", s.weight),
                })
                .collect();
            println!(
                "  (canary: before the switch, nginx shares the traffic: {}; each step judged from {})",
                steps.join(", then "),
                ctx.cfg
                    .nginx
                    .access_log
                    .as_deref()
                    .map_or_else(String::new, |p| p.display().to_string())
            );
        }
    }
    // With promotion manual, a new image stops after its gate: the file gains the preview.
    let opening = plan.actions.iter().find_map(|a| match a {
        Action::Deploy(r) | Action::Switch(r) if preview::opens(&ctx.cfg, &observed, r) => Some(r),
        _ => None,
    });
    let cfg = &ctx.cfg;
    let upstream_name = &cfg.nginx.upstream_name;
    if let (Some(r), Some(live)) = (opening, live) {
        println!(
            "  (preview {} ({}): await promotion after the health gate; production stays on {}, upstream {} names it until fieldtrack promote)",
            r.image,
            r.color,
            live.color.map(|c| c.to_string()).unwrap_or_default(),
            preview_name(upstream_name)
        );
    }
    // What the file says after the switch with promotion manual: the preview block names
    // production too.
    let with_preview =
        |text: String, color: crate::model::Color, image: &str| match cfg.rollout.promotion {
            Promotion::Manual => {
                let servers = crate::model::runtime::Endpoints::loopback(cfg.port(color)).addrs;
                let comment = format!("no preview runs, the live {color} {}:{image}", cfg.app);
                text + &render_preview(
                    upstream_name,
                    &servers,
                    &comment,
                    cfg.nginx.upstream_keepalive,
                )
            }
            Promotion::Auto => text,
        };
    let path = &ctx.cfg.nginx.upstream_file;
    let swarm = ctx.cfg.runtime == RuntimeKind::Swarm;
    let live_color = live.and_then(|c| c.color);
    let after = match (opening, live_color, plan.target()) {
        (Some(r), Some(stable), _) if !swarm => {
            let main = render(
                upstream_name,
                cfg.port(stable),
                &format!(
                    "{stable} {}:{}",
                    cfg.app,
                    observed.history.first().map_or("previous", |h| h.as_str())
                ),
                cfg.nginx.upstream_keepalive,
            );
            let servers = crate::model::runtime::Endpoints::loopback(cfg.port(r.color)).addrs;
            Some(
                main + &render_preview(
                    upstream_name,
                    &servers,
                    &format!("preview {} {}:{}", r.color, cfg.app, r.image),
                    cfg.nginx.upstream_keepalive,
                ),
            )
        }
        (_, _, target) => match target {
            Some((color, _)) if swarm => {
                println!(
                "\nnginx will name each {color} replica (node address, port {}) once it answers its health probe.",
                ctx.cfg.port(color)
            );
                None
            }
            Some((color, image)) => Some(with_preview(
                render(
                    &ctx.cfg.nginx.upstream_name,
                    ctx.cfg.port(color),
                    &format!("{color} {}:{image}", ctx.cfg.app),
                    ctx.cfg.nginx.upstream_keepalive,
                ),
                color,
                image,
            )),
            None => plan.actions.iter().find_map(|a| match a {
                Action::Refresh { color } => observed.container(&ctx.cfg, *color).map(|c| {
                    render_servers(
                        &ctx.cfg.nginx.upstream_name,
                        &c.endpoints,
                        &format!("{color} {}:{}", ctx.cfg.app, desired.image.as_written()),
                        ctx.cfg.nginx.upstream_keepalive,
                    )
                }),
                _ => None,
            }),
        },
    };
    if let Some(after) = after {
        let before = ctx
            .upstream_text()
            .map_err(|e| CliError::Failed(e.to_string()))?
            .unwrap_or_default();
        let diff = similar::TextDiff::from_lines(&before, &after);
        println!(
            "\n{}",
            diff.unified_diff().context_radius(3).header(
                &path.display().to_string(),
                &format!("{} (after the switch)", path.display())
            )
        );
    }
    Ok(3)
}
