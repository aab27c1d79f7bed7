//! Checks of a packet's content that both protocol versions make the same way.

use super::{Active, excerpt};
use crate::auth;
use crate::error::Close;
use crate::net::Cx;
use crate::topic_filter::{Filter, TopicError};

/// A user name without U+0000 [MQTT-1.5.4-2] (the codec checked it is UTF-8); one with
/// it makes the CONNECT malformed, which is logged here.
pub fn user_name_ok(name: Option<&str>) -> bool {
    let ok = name.is_none_or(|n| !n.contains('\0'));
    if !ok {
        tracing::debug!(user = ?name.map(excerpt), "U+0000 in the user name: malformed CONNECT");
    }
    ok
}

/// The topic filters of a SUBSCRIBE or UNSUBSCRIBE (`kind`), both protocol versions,
/// checked before any of them takes effect: a packet that breaks one of these rules is
/// not answered filter by filter but ends the connection (MQTT 5: DISCONNECT first).
pub fn check_filters<'a>(kind: &str, filters: impl Iterator<Item = &'a str>) -> Result<(), Close> {
    use ntex_mqtt::v5::codec::DisconnectReasonCode as R;
    let mut any = false;
    for f in filters {
        any = true;
        // Topic filters are at least one character long [MQTT-4.7.3-1].
        if f.is_empty() {
            return Err(Close::protocol(
                R::ProtocolError,
                format!("{kind} with a zero-length topic filter"),
            ));
        }
        // A string with U+0000 is a malformed packet [MQTT-1.5.4-2].
        if f.contains('\0') {
            return Err(Close::protocol(
                R::MalformedPacket,
                format!("{kind} with U+0000 in a topic filter"),
            ));
        }
    }
    // At least one filter [MQTT-3.8.3-3], [MQTT-3.10.3-2].
    if !any {
        return Err(Close::protocol(
            R::ProtocolError,
            format!("{kind} without a topic filter"),
        ));
    }
    Ok(())
}

/// Why one filter of a SUBSCRIBE is not granted (the SUBACK says so for that filter).
#[derive(Debug)]
pub enum FilterRefused {
    /// Not a valid filter (its code names why).
    Invalid(TopicError),
    /// No Local on a shared subscription: a protocol error [MQTT-3.8.3-4]; refusing
    /// just that filter is gentler than closing the connection.
    NoLocalOnShared,
    /// The connection's rights do not cover it (counted and logged).
    NotAuthorized,
}

/// One filter of a SUBSCRIBE, either version: parsed, and allowed by the connection's
/// rights. `no_local` is MQTT 5's subscription option (false for 3.1.1).
pub fn subscription_filter(
    a: &Active,
    cx: &Cx<'_>,
    raw: &str,
    no_local: bool,
) -> Result<Filter, FilterRefused> {
    let filter = Filter::parse(raw).map_err(|e| {
        tracing::debug!(filter = %raw, code = e.code(), "subscription refused");
        FilterRefused::Invalid(e)
    })?;
    if filter.group.is_some() && no_local {
        return Err(FilterRefused::NoLocalOnShared);
    }
    if !a.acl.may_subscribe(&filter.pattern) {
        auth::subscribe_refused(cx.shared.router.metrics(), &a.client_id, raw);
        return Err(FilterRefused::NotAuthorized);
    }
    Ok(filter)
}
