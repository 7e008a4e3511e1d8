//! The control operations, one method each: who may call it, what it checks, what it changes.
//!
//! Every method takes the caller's identity and decides authorization first, on the writer,
//! against the state it then acts on; the closure it hands to the writer is written here, next
//! to its name, so a write can be followed from the API handler to the commit in one file.

use std::time::Duration;

use super::auth::{Caller, generate_token, hash_token};
use super::changes::Effect;
use super::error::ControlError;
use super::stacks::service_specs;
use super::state::{NodeSpec, ReplaceSummary, Report, Swept, require_admin};
use super::views::{
    self, Endpoint, EndpointFilter, Fleet, NodeAssignments, NodeRegistered, NodeStatus, StackApplied,
    StackStatus,
};
use super::{Committed, Control};
use crate::model::{Container, ContainerKey, Label, Limits, Node, ServiceKey};
use crate::placement::Change;
use crate::stackfile::Stackfile;
use crate::store::StackRecord;

/// Most tombstones one sweep removes, so that a backlog (a first sweep after an upgrade, a
/// mass stop a week ago) is cleared in many small writer batches instead of one long one.
pub const SWEEP_BATCH: usize = 10_000;

/// A Stackfile as a user submitted it, already parsed.
#[derive(Debug, Clone)]
pub struct StackSubmission {
    pub user: Label,
    pub stack: Label,
    pub file: Stackfile,
    /// The text as sent, kept with the stack.
    pub body: String,
    pub content_type: Option<String>,
}

/// A fresh token and its stored form.
fn new_token() -> Result<(String, String), ControlError> {
    let token = generate_token().map_err(ControlError::NoRandomness)?;
    let hash = hash_token(&token);
    Ok((token, hash))
}

fn stack_not_found(user: &Label, stack: &Label) -> ControlError {
    ControlError::NotFound {
        what: "stack",
        name: format!("{user}/{stack}"),
    }
}

/// Nodes: the admin any node, a user the nodes it registered, a node itself.
impl Control {
    /// Creates or updates a node; a new node's token is in the answer, and only there. An
    /// admin registers platform nodes; a user token registers a node of that user's own.
    pub async fn register_node(
        &self,
        caller: Caller,
        name: Label,
        spec: NodeSpec,
    ) -> Result<Committed<NodeRegistered>, ControlError> {
        let (token, token_hash) = new_token()?;
        self.run(move |ctx| {
            let owner = ctx.state.authorize_node_admin(&caller, &name, Some(&spec))?;
            let effect = ctx
                .state
                .put_node(&name, spec, owner, token_hash, ctx.now, ctx.changes);
            let status = views::node_status(ctx.state, ctx.state.node(&name)?, ctx.now);
            let created = effect == Effect::Created;
            Ok(NodeRegistered {
                status,
                created,
                token: created.then_some(token),
            })
        })
        .await
    }

    pub async fn node(&self, caller: Caller, name: Label) -> Result<Committed<NodeStatus>, ControlError> {
        self.run(move |ctx| {
            ctx.state.authorize_node_admin(&caller, &name, None)?;
            Ok(views::node_status(ctx.state, ctx.state.node(&name)?, ctx.now))
        })
        .await
    }

    /// Every node for the admin; a user's own nodes for a user token.
    pub async fn nodes(&self, caller: Caller) -> Result<Committed<Vec<NodeStatus>>, ControlError> {
        self.run(move |ctx| {
            let owner = match &caller {
                Caller::Admin => None,
                Caller::User { user, .. } if ctx.state.may_act_for(&caller, user) => Some(user.clone()),
                Caller::User { .. } => return Err(ControlError::Unauthorized),
                Caller::Node { .. } => {
                    require_admin(&caller)?;
                    None
                }
            };
            Ok(ctx
                .state
                .nodes()
                .filter(|n| owner.is_none() || n.node.owner == owner)
                .map(|n| views::node_status(ctx.state, n, ctx.now))
                .collect())
        })
        .await
    }

    /// Removes a node; its containers leave DNS and stay as tombstones.
    pub async fn delete_node(&self, caller: Caller, name: Label) -> Result<Committed<Node>, ControlError> {
        self.run(move |ctx| {
            ctx.state.authorize_node_admin(&caller, &name, None)?;
            ctx.state.delete_node(&name, ctx.changes)
        })
        .await
    }

    /// Gives a node a new token; the old one stops working with this commit.
    pub async fn rotate_node_token(
        &self,
        caller: Caller,
        name: Label,
    ) -> Result<Committed<NodeRegistered>, ControlError> {
        let (token, token_hash) = new_token()?;
        self.run(move |ctx| {
            ctx.state.authorize_node_admin(&caller, &name, None)?;
            ctx.state.set_node_token(&name, token_hash, ctx.changes)?;
            Ok(NodeRegistered {
                status: views::node_status(ctx.state, ctx.state.node(&name)?, ctx.now),
                created: false,
                token: Some(token),
            })
        })
        .await
    }

    /// Renews a node's lease (admin or the node itself); answers the node's address.
    pub async fn heartbeat(
        &self,
        caller: Caller,
        node: Label,
    ) -> Result<Committed<std::net::IpAddr>, ControlError> {
        self.run(move |ctx| {
            ctx.state.authorize_node(&caller, &node)?;
            ctx.state.heartbeat(&node, ctx.now, ctx.changes)?;
            Ok(ctx.state.node(&node)?.node.address)
        })
        .await
    }

    /// Marks nodes lost whose lease lapsed; run periodically by the server itself.
    pub async fn expire_leases(&self, ttl: Duration) -> Result<(), ControlError> {
        // Only the leader decides that a node is lost (a follower's leases are not fed).
        self.run(move |ctx| {
            Ok(if ctx.leading {
                ctx.state.expire_leases(ctx.now, ttl, ctx.changes)
            } else {
                0
            })
        })
        .await
        .map(|lost| self.metrics().leases_expired(lost.value))
    }

    /// Removes up to [`SWEEP_BATCH`] tombstones that stopped more than `retention` ago (see
    /// [`State::sweep_tombstones`](super::state::State::sweep_tombstones)).
    pub async fn sweep_tombstones(&self, retention: Duration) -> Result<Swept, ControlError> {
        self.run(move |ctx| {
            if !ctx.leading {
                return Ok(Swept::default());
            }
            let now = super::state::unix_now();
            Ok(ctx
                .state
                .sweep_tombstones(retention, now, SWEEP_BATCH, ctx.changes))
        })
        .await
        .map(|committed| committed.value)
    }
}

/// Containers, as a node's agent reports them.
impl Control {
    /// Records that `key` runs on `node` (generation-fenced); renews the node's lease.
    pub async fn put_container(
        &self,
        caller: Caller,
        node: Label,
        key: ContainerKey,
        report: Report,
    ) -> Result<Committed<(Container, Effect)>, ControlError> {
        self.run(move |ctx| {
            ctx.state.authorize_node(&caller, &node)?;
            ctx.state.put_container(&node, key, report, ctx.now, ctx.changes)
        })
        .await
    }

    /// Records that `key` stopped on `node` (and why, if the agent says); without a
    /// generation, the stored one is used.
    pub async fn stop_container(
        &self,
        caller: Caller,
        node: Label,
        key: ContainerKey,
        generation: Option<u64>,
        detail: Option<String>,
    ) -> Result<Committed<Container>, ControlError> {
        self.run(move |ctx| {
            ctx.state.authorize_node(&caller, &node)?;
            let (stopped, _) =
                ctx.state
                    .delete_container(&node, &key, generation, detail, ctx.now, ctx.changes)?;
            Ok(stopped)
        })
        .await
    }

    /// Anti-entropy: `reports` is everything running on `node`, all or nothing. Answers what
    /// changed and what runs there now.
    pub async fn replace_containers(
        &self,
        caller: Caller,
        node: Label,
        reports: Vec<(ContainerKey, Report)>,
    ) -> Result<Committed<(ReplaceSummary, Vec<Container>)>, ControlError> {
        self.run(move |ctx| {
            ctx.state.authorize_node(&caller, &node)?;
            let summary = ctx
                .state
                .replace_containers(&node, reports, ctx.now, ctx.changes)?;
            Ok((summary, ctx.state.running_on(&node).cloned().collect()))
        })
        .await
    }

    /// What runs on `node`, as stackdns knows it.
    pub async fn node_containers(
        &self,
        caller: Caller,
        node: Label,
    ) -> Result<Committed<Vec<Container>>, ControlError> {
        self.run(move |ctx| {
            ctx.state.authorize_node(&caller, &node)?;
            ctx.state.node(&node)?;
            Ok(ctx.state.running_on(&node).cloned().collect())
        })
        .await
    }

    /// What `node` must run. A blocking query: with `wait`, answers as soon as the node's
    /// assignments change past `index`, when `wait` runs out, or when the server shuts down.
    pub async fn assignments(
        &self,
        caller: Caller,
        node: Label,
        index: u64,
        wait: Duration,
    ) -> Result<Committed<NodeAssignments>, ControlError> {
        let deadline = tokio::time::Instant::now() + wait;
        // Dropped on every way out (an error, the answer, a client that goes away).
        let mut changes = self.wakers.subscribe(&node);
        loop {
            changes.mark_seen();
            let (name, who) = (node.clone(), caller.clone());
            let done = self
                .run(move |ctx| {
                    ctx.state.authorize_node(&who, &name)?;
                    ctx.state.node(&name)?;
                    Ok(views::node_assignments(ctx.state, &name))
                })
                .await?;
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if done.value.index > index || remaining.is_zero() || self.shutdown.is_cancelled() {
                return Ok(done);
            }
            tokio::select! {
                _ = tokio::time::sleep(remaining) => {}
                () = changes.changed() => {}
                () = self.shutdown.cancelled() => {}
            }
        }
    }
}

/// Users and their tokens: admin only.
impl Control {
    /// Sets the limits of `user` (admin only); `None` fields keep their current value.
    pub async fn set_user_limits(
        &self,
        caller: Caller,
        user: Label,
        max_containers: Option<u32>,
        max_stacks: Option<u32>,
        max_nodes: Option<u32>,
    ) -> Result<Committed<(Limits, (u32, u32))>, ControlError> {
        self.run(move |ctx| {
            require_admin(&caller)?;
            let current = ctx.state.limits_of(&user);
            let limits = Limits {
                max_containers: max_containers.unwrap_or(current.max_containers),
                max_stacks: max_stacks.unwrap_or(current.max_stacks),
                max_nodes: max_nodes.unwrap_or(current.max_nodes),
            };
            ctx.state.set_limits(&user, limits, ctx.changes);
            Ok((limits, ctx.state.usage_of(&user)))
        })
        .await
    }

    /// The limits of `user` and what it uses (the admin, or that user).
    pub async fn user_limits(
        &self,
        caller: Caller,
        user: Label,
    ) -> Result<Committed<(Limits, (u32, u32))>, ControlError> {
        self.run(move |ctx| {
            if matches!(caller, Caller::Node { .. }) || !ctx.state.may_act_for(&caller, &user) {
                return Err(ControlError::Forbidden(
                    "a user's limits are for the admin and that user".to_owned(),
                ));
            }
            Ok((ctx.state.limits_of(&user), ctx.state.usage_of(&user)))
        })
        .await
    }

    /// A new token for `user` (existing ones stay valid); shown once, stored hashed.
    pub async fn issue_user_token(
        &self,
        caller: Caller,
        user: Label,
    ) -> Result<Committed<String>, ControlError> {
        let (token, hash) = new_token()?;
        self.run(move |ctx| {
            require_admin(&caller)?;
            ctx.state.add_user_token(&user, hash, ctx.changes);
            Ok(token)
        })
        .await
    }

    /// Every token of `user` stops working; answers how many there were.
    pub async fn revoke_user_tokens(
        &self,
        caller: Caller,
        user: Label,
    ) -> Result<Committed<usize>, ControlError> {
        self.run(move |ctx| {
            require_admin(&caller)?;
            Ok(ctx.state.revoke_user_tokens(&user, ctx.changes))
        })
        .await
    }
}

/// Stacks: the admin, or the user they belong to.
impl Control {
    /// Places a whole stack as declared, or refuses it (422) changing nothing. A dry run
    /// answers the plan and every node's verdict without applying it.
    pub async fn apply_stack(
        &self,
        caller: Caller,
        submission: StackSubmission,
        dry_run: bool,
    ) -> Result<Committed<StackApplied>, ControlError> {
        let StackSubmission {
            user,
            stack,
            file,
            body,
            content_type,
        } = submission;
        let services = service_specs(&user, &stack, &file);
        // Who may, and what it would cost before any planning (so an oversized request costs
        // nothing); then the plan, which costs what it changes.
        let result = self
            .run(move |ctx| {
                ctx.state.authorize_stacks(&caller, &user, &stack)?;
                let created = ctx.state.stacks().get(&user, &stack).is_none();
                let stacks_after = u64::from(ctx.state.usage_of(&user).1) + u64::from(created);
                let load = ctx.state.declared_load(&user, &stack, &services);
                ctx.state.check_quota(&user, load, stacks_after)?;
                let change = Change::Apply {
                    user: user.clone(),
                    stack: stack.clone(),
                    services,
                };
                let plan = ctx.state.plan(&change, dry_run)?;
                ctx.state
                    .check_quota(&user, ctx.state.planned_for(&plan, &user), stacks_after)?;
                if dry_run {
                    let status = views::planned(ctx.state, &user, &stack, &file, &plan);
                    let (verdicts, verdicts_total) = views::visible_verdicts(plan.verdicts);
                    return Ok(StackApplied {
                        status,
                        created,
                        changes: None,
                        verdicts_total,
                        verdicts: Some(verdicts),
                    });
                }
                let applied = ctx.state.apply_plan(&plan, ctx.changes);
                let services = (plan.services.iter())
                    .filter_map(|(_, spec)| spec.clone())
                    .collect();
                let record = StackRecord {
                    user: user.clone(),
                    stack: stack.clone(),
                    body,
                    content_type,
                    file,
                    services,
                };
                ctx.state.put_stack(record, ctx.changes);
                let status = views::stack_status(ctx.state, &user, &stack)
                    .ok_or_else(|| stack_not_found(&user, &stack))?;
                Ok(StackApplied {
                    status,
                    created,
                    changes: Some(applied),
                    verdicts: None,
                    verdicts_total: 0,
                })
            })
            .await;
        self.count_refusal(&result, dry_run);
        result
    }

    /// A stack: services, desired vs running, and every placed container.
    pub async fn stack(
        &self,
        caller: Caller,
        user: Label,
        stack: Label,
    ) -> Result<Committed<StackStatus>, ControlError> {
        self.run(move |ctx| {
            ctx.state.authorize_stacks(&caller, &user, &stack)?;
            views::stack_status(ctx.state, &user, &stack).ok_or_else(|| stack_not_found(&user, &stack))
        })
        .await
    }

    /// The names of `user`'s stacks; empty for a caller who may not see them (nothing is
    /// said about why).
    pub async fn stacks_of(
        &self,
        caller: Caller,
        user: Label,
    ) -> Result<Committed<Vec<Label>>, ControlError> {
        self.run(move |ctx| {
            if matches!(caller, Caller::Node { .. }) {
                ctx.state.authorize_stacks(&caller, &user, &user)?;
            }
            if !ctx.state.may_act_for(&caller, &user) {
                return Ok(Vec::new());
            }
            Ok(ctx.state.stacks().of_user(&user).cloned().collect())
        })
        .await
    }

    /// Every stack the caller may see, as (user, stack): all of them for the admin, a user's
    /// own for a user token.
    pub async fn visible_stacks(
        &self,
        caller: Caller,
    ) -> Result<Committed<Vec<(Label, Label)>>, ControlError> {
        self.run(move |ctx| Ok(stacks_visible_to(ctx.state, &caller)?.cloned().collect()))
            .await
    }

    /// Every stack the caller may see, whole (as [`Control::stack`] answers each), read in one
    /// job so the list is consistent: for the dashboard's overview.
    pub async fn visible_stack_statuses(
        &self,
        caller: Caller,
    ) -> Result<Committed<Vec<StackStatus>>, ControlError> {
        self.run(move |ctx| {
            Ok(stacks_visible_to(ctx.state, &caller)?
                .filter_map(|(user, stack)| views::stack_status(ctx.state, user, stack))
                .collect())
        })
        .await
    }

    /// Changes a service's target; placement decides or refuses (422). A dry run answers
    /// the plan and every node's verdict without applying it.
    pub async fn scale_service(
        &self,
        caller: Caller,
        service: ServiceKey,
        target: u32,
        dry_run: bool,
    ) -> Result<Committed<StackApplied>, ControlError> {
        let (user, stack) = (service.user.clone(), service.stack.clone());
        let result = self
            .run(move |ctx| {
                ctx.state.authorize_stacks(&caller, &user, &stack)?;
                if ctx.state.stacks().get(&user, &stack).is_none() {
                    return Err(stack_not_found(&user, &stack));
                }
                // Before placement: the service's current containers give way to `target`.
                let current = (ctx.state.stacks().assignments_of_stack(&user, &stack))
                    .filter(|a| a.service == service)
                    .count() as u64;
                let (used, stacks) = ctx.state.usage_of(&user);
                let wanted = u64::from(used) - current + u64::from(target);
                ctx.state.check_quota(&user, wanted, u64::from(stacks))?;
                let plan = ctx.state.plan(&Change::Scale { service, target }, dry_run)?;
                ctx.state
                    .check_quota(&user, ctx.state.planned_for(&plan, &user), u64::from(stacks))?;
                let Some(record) = ctx.state.stacks().get(&user, &stack) else {
                    return Err(stack_not_found(&user, &stack));
                };
                if dry_run {
                    let status = views::planned(ctx.state, &user, &stack, &record.file, &plan);
                    let (verdicts, verdicts_total) = views::visible_verdicts(plan.verdicts);
                    return Ok(StackApplied {
                        status,
                        created: false,
                        changes: None,
                        verdicts_total,
                        verdicts: Some(verdicts),
                    });
                }
                let applied = ctx.state.apply_plan(&plan, ctx.changes);
                let status = views::stack_status(ctx.state, &user, &stack)
                    .ok_or_else(|| stack_not_found(&user, &stack))?;
                Ok(StackApplied {
                    status,
                    created: false,
                    changes: Some(applied),
                    verdicts: None,
                    verdicts_total: 0,
                })
            })
            .await;
        self.count_refusal(&result, dry_run);
        result
    }

    /// Counts a refusal by placement of a change that was to be applied (a dry run asks, it
    /// does not fail a deploy).
    fn count_refusal<T>(&self, result: &Result<T, ControlError>, dry_run: bool) {
        if let (Err(ControlError::Unplaceable { code, .. }), false) = (result, dry_run) {
            self.metrics().placement_refused(code);
        }
    }

    /// Removes a stack and every container placement gave it.
    pub async fn delete_stack(
        &self,
        caller: Caller,
        user: Label,
        stack: Label,
    ) -> Result<Committed<()>, ControlError> {
        self.run(move |ctx| {
            ctx.state.authorize_stacks(&caller, &user, &stack)?;
            if ctx.state.stacks().get(&user, &stack).is_none() {
                return Err(stack_not_found(&user, &stack));
            }
            let change = Change::DeleteStack {
                user: user.clone(),
                stack: stack.clone(),
            };
            let plan = ctx.state.plan(&change, false)?;
            ctx.state.apply_plan(&plan, ctx.changes);
            ctx.state.remove_stack(&user, &stack, ctx.changes)
        })
        .await
    }
}

/// The (user, stack) of every stack `caller` may see: all for the admin, a user's own for a
/// user token; a node token is refused.
fn stacks_visible_to<'a>(
    state: &'a super::state::State,
    caller: &'a Caller,
) -> Result<impl Iterator<Item = &'a (Label, Label)> + 'a, ControlError> {
    if matches!(caller, Caller::Node { .. }) {
        return Err(ControlError::Forbidden(
            "a node token cannot act on stacks".to_owned(),
        ));
    }
    Ok(state
        .stacks()
        .all()
        .filter(move |(user, _)| state.may_act_for(caller, user)))
}

/// For monitoring: what a scraper should scrape.
impl Control {
    /// The endpoints of the running containers the caller may see (all for the admin, a
    /// user's own for a user token) that `filter` matches, for Prometheus service discovery.
    pub async fn endpoints(
        &self,
        caller: Caller,
        filter: EndpointFilter,
    ) -> Result<Committed<Vec<Endpoint>>, ControlError> {
        self.run(move |ctx| {
            if matches!(caller, Caller::Node { .. }) {
                return Err(ControlError::Forbidden(
                    "a node token cannot list endpoints; use the admin token or a user's token".to_owned(),
                ));
            }
            let state = &*ctx.state;
            Ok(views::endpoints(state, &filter, |user| {
                state.may_act_for(&caller, user)
            }))
        })
        .await
    }
}

/// For the operator: unauthenticated, read-only.
impl Control {
    /// Nodes by lease state and containers by state.
    pub async fn fleet(&self) -> Result<Committed<Fleet>, ControlError> {
        self.run(|ctx| Ok(views::fleet(ctx.state))).await
    }

    /// Answers once the writer answers: writes will be accepted.
    pub async fn ready(&self) -> Result<Committed<()>, ControlError> {
        self.run(|_| Ok(())).await
    }
}
