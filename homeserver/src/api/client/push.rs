use std::sync::Arc;

use ruma::{
    api::client::push::{
        delete_pushrule, get_pushrule, get_pushrule_actions, get_pushrule_enabled, get_pushrules_all,
        get_pushrules_global_scope, set_pushrule, set_pushrule_actions, set_pushrule_enabled,
    },
    push::{InsertPushRuleError, RemovePushRuleError},
};

use crate::{api::Ruma, err, error::Result, service::Services};

/// Loads the user's rules, applies `edit` and stores the result, one edit at a time per user.
async fn edit_rules(
    s: &Services,
    user: &ruma::UserId,
    edit: impl FnOnce(&mut ruma::push::Ruleset) -> Result<()>,
) -> Result<()> {
    let _guard = s.locks.lock(format!("pushrules:{user}")).await;
    let mut rules = s.push_rules(user)?;
    edit(&mut rules)?;
    s.set_push_rules(user, &rules).await
}

/// `GET /_matrix/client/v3/pushrules/`
pub async fn get_pushrules_all_route(
    s: Arc<Services>,
    body: Ruma<get_pushrules_all::v3::Request>,
) -> Result<get_pushrules_all::v3::Response> {
    Ok(get_pushrules_all::v3::Response::new(s.push_rules(body.user()?)?))
}

/// `GET /_matrix/client/v3/pushrules/global/`
pub async fn get_pushrules_global_route(
    s: Arc<Services>,
    body: Ruma<get_pushrules_global_scope::v3::Request>,
) -> Result<get_pushrules_global_scope::v3::Response> {
    Ok(get_pushrules_global_scope::v3::Response::new(s.push_rules(body.user()?)?))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn get_pushrule_route(
    s: Arc<Services>,
    body: Ruma<get_pushrule::v3::Request>,
) -> Result<get_pushrule::v3::Response> {
    let rules = s.push_rules(body.user()?)?;
    let rule = rules
        .get(body.body.kind.clone(), &body.body.rule_id)
        .ok_or_else(|| err!(NotFound, "No such push rule"))?
        .to_owned();
    Ok(get_pushrule::v3::Response::new(rule.into()))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn set_pushrule_route(
    s: Arc<Services>,
    body: Ruma<set_pushrule::v3::Request>,
) -> Result<set_pushrule::v3::Response> {
    let req = &body.body;
    edit_rules(&s, body.user()?, |rules| {
        rules.insert(req.rule.clone(), req.after.as_deref(), req.before.as_deref()).map_err(|e| match e {
            InsertPushRuleError::UnknownRuleId => err!(NotFound, "The before or after rule does not exist"),
            other => err!(InvalidParam, "Invalid push rule: {other}"),
        })
    })
    .await?;
    Ok(set_pushrule::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn delete_pushrule_route(
    s: Arc<Services>,
    body: Ruma<delete_pushrule::v3::Request>,
) -> Result<delete_pushrule::v3::Response> {
    edit_rules(&s, body.user()?, |rules| {
        rules.remove(body.body.kind.clone(), &body.body.rule_id).map_err(|e| match e {
            RemovePushRuleError::NotFound => err!(NotFound, "No such push rule"),
            other => err!(InvalidParam, "Cannot remove this push rule: {other}"),
        })
    })
    .await?;
    Ok(delete_pushrule::v3::Response::new())
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`
pub async fn get_pushrule_enabled_route(
    s: Arc<Services>,
    body: Ruma<get_pushrule_enabled::v3::Request>,
) -> Result<get_pushrule_enabled::v3::Response> {
    let rules = s.push_rules(body.user()?)?;
    let rule =
        rules.get(body.body.kind.clone(), &body.body.rule_id).ok_or_else(|| err!(NotFound, "No such push rule"))?;
    Ok(get_pushrule_enabled::v3::Response::new(rule.enabled()))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`
pub async fn set_pushrule_enabled_route(
    s: Arc<Services>,
    body: Ruma<set_pushrule_enabled::v3::Request>,
) -> Result<set_pushrule_enabled::v3::Response> {
    edit_rules(&s, body.user()?, |rules| {
        rules
            .set_enabled(body.body.kind.clone(), &body.body.rule_id, body.body.enabled)
            .map_err(|_| err!(NotFound, "No such push rule"))
    })
    .await?;
    Ok(set_pushrule_enabled::v3::Response::new())
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`
pub async fn get_pushrule_actions_route(
    s: Arc<Services>,
    body: Ruma<get_pushrule_actions::v3::Request>,
) -> Result<get_pushrule_actions::v3::Response> {
    let rules = s.push_rules(body.user()?)?;
    let rule =
        rules.get(body.body.kind.clone(), &body.body.rule_id).ok_or_else(|| err!(NotFound, "No such push rule"))?;
    Ok(get_pushrule_actions::v3::Response::new(rule.actions().to_vec()))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`
pub async fn set_pushrule_actions_route(
    s: Arc<Services>,
    body: Ruma<set_pushrule_actions::v3::Request>,
) -> Result<set_pushrule_actions::v3::Response> {
    edit_rules(&s, body.user()?, |rules| {
        rules
            .set_actions(body.body.kind.clone(), &body.body.rule_id, body.body.actions.clone())
            .map_err(|_| err!(NotFound, "No such push rule"))
    })
    .await?;
    Ok(set_pushrule_actions::v3::Response::new())
}
