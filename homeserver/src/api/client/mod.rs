//! Client-server API handlers. Each is `<endpoint>_route`, with its method
//! and path in the doc line; the path itself comes from ruma's metadata.

mod account;
mod account_data;
mod device;
mod directory;
mod discovery;
mod keys;
mod membership;
mod message;
mod mfa;
mod profile;
mod push;
mod receipt;
mod redact;
pub(crate) mod register;
mod room;
mod session;
mod state;
mod sync;
mod threepid;

use ruma::api::client as c;

use super::{AppState, RumaRouter};

/// Registers every client-server endpoint.
pub fn routes(router: axum::Router<AppState>) -> axum::Router<AppState> {
    threepid::routes(mfa::routes(router))
        .ruma_route::<c::discovery::get_supported_versions::Request, _, _>(discovery::get_supported_versions_route)
        .ruma_route::<c::discovery::discover_homeserver::Request, _, _>(discovery::discover_homeserver_route)
        .ruma_route::<ruma::api::federation::discovery::discover_homeserver::Request, _, _>(
            discovery::discover_server_route,
        )
        .ruma_route::<c::account::register::v3::Request, _, _>(register::register_route)
        .ruma_route::<c::account::get_username_availability::v3::Request, _, _>(register::username_available_route)
        .ruma_route::<c::account::check_registration_token_validity::v1::Request, _, _>(
            register::registration_token_validity_route,
        )
        .ruma_route::<c::session::get_login_types::v3::Request, _, _>(session::get_login_types_route)
        .ruma_route::<c::session::login::v3::Request, _, _>(session::login_route)
        .ruma_route::<c::session::refresh_token::v3::Request, _, _>(session::refresh_route)
        .ruma_route::<c::session::logout::v3::Request, _, _>(session::logout_route)
        .ruma_route::<c::session::logout_all::v3::Request, _, _>(session::logout_all_route)
        .ruma_route::<c::account::whoami::v3::Request, _, _>(account::whoami_route)
        .ruma_route::<c::account::change_password::v3::Request, _, _>(account::change_password_route)
        .ruma_route::<c::account::deactivate::v3::Request, _, _>(account::deactivate_route)
        .ruma_route::<c::account::get_3pids::v3::Request, _, _>(account::get_3pids_route)
        .ruma_route::<c::account::request_registration_token_via_email::v3::Request, _, _>(
            threepid::register_email_request_token_route,
        )
        .ruma_route::<c::account::request_3pid_management_token_via_email::v3::Request, _, _>(
            threepid::account_email_request_token_route,
        )
        .ruma_route::<c::account::request_password_change_token_via_email::v3::Request, _, _>(
            threepid::password_email_request_token_route,
        )
        .ruma_route::<c::account::add_3pid::v3::Request, _, _>(threepid::add_3pid_route)
        .ruma_route::<c::account::delete_3pid::v3::Request, _, _>(threepid::delete_3pid_route)
        .ruma_route::<c::device::get_devices::v3::Request, _, _>(device::get_devices_route)
        .ruma_route::<c::device::get_device::v3::Request, _, _>(device::get_device_route)
        .ruma_route::<c::device::update_device::v3::Request, _, _>(device::update_device_route)
        .ruma_route::<c::device::delete_device::v3::Request, _, _>(device::delete_device_route)
        .ruma_route::<c::device::delete_devices::v3::Request, _, _>(device::delete_devices_route)
        .ruma_route::<c::profile::get_profile::v3::Request, _, _>(profile::get_profile_route)
        .ruma_route::<c::profile::get_display_name::v3::Request, _, _>(profile::get_display_name_route)
        .ruma_route::<c::profile::set_display_name::v3::Request, _, _>(profile::set_display_name_route)
        .ruma_route::<c::profile::get_avatar_url::v3::Request, _, _>(profile::get_avatar_url_route)
        .ruma_route::<c::profile::set_avatar_url::v3::Request, _, _>(profile::set_avatar_url_route)
        .ruma_route::<c::room::create_room::v3::Request, _, _>(room::create_room_route)
        .ruma_route::<c::room::get_room_event::v3::Request, _, _>(room::get_room_event_route)
        .ruma_route_empty_state_key::<c::state::send_state_event::v3::Request, _, _>(state::send_state_event_route)
        .ruma_route_empty_state_key::<c::state::get_state_event_for_key::v3::Request, _, _>(
            state::get_state_event_route,
        )
        .ruma_route::<c::state::get_state_events::v3::Request, _, _>(state::get_state_events_route)
        .ruma_route::<c::message::send_message_event::v3::Request, _, _>(message::send_message_event_route)
        .ruma_route::<c::message::get_message_events::v3::Request, _, _>(message::get_message_events_route)
        .ruma_route::<c::membership::joined_rooms::v3::Request, _, _>(membership::joined_rooms_route)
        .ruma_route::<c::membership::join_room_by_id::v3::Request, _, _>(membership::join_room_by_id_route)
        .ruma_route::<c::membership::join_room_by_id_or_alias::v3::Request, _, _>(
            membership::join_room_by_id_or_alias_route,
        )
        .ruma_route::<c::membership::invite_user::v3::Request, _, _>(membership::invite_user_route)
        .ruma_route::<c::membership::leave_room::v3::Request, _, _>(membership::leave_room_route)
        .ruma_route::<c::membership::kick_user::v3::Request, _, _>(membership::kick_user_route)
        .ruma_route::<c::membership::ban_user::v3::Request, _, _>(membership::ban_user_route)
        .ruma_route::<c::membership::unban_user::v3::Request, _, _>(membership::unban_user_route)
        .ruma_route::<c::membership::joined_members::v3::Request, _, _>(membership::joined_members_route)
        .ruma_route::<c::membership::get_member_events::v3::Request, _, _>(membership::get_member_events_route)
        .ruma_route::<c::sync::sync_events::v3::Request, _, _>(sync::sync_events_route)
        .ruma_route::<c::filter::create_filter::v3::Request, _, _>(sync::create_filter_route)
        .ruma_route::<c::filter::get_filter::v3::Request, _, _>(sync::get_filter_route)
        .ruma_route::<c::config::set_global_account_data::v3::Request, _, _>(
            account_data::set_global_account_data_route,
        )
        .ruma_route::<c::config::get_global_account_data::v3::Request, _, _>(
            account_data::get_global_account_data_route,
        )
        .ruma_route::<c::config::set_room_account_data::v3::Request, _, _>(account_data::set_room_account_data_route)
        .ruma_route::<c::config::get_room_account_data::v3::Request, _, _>(account_data::get_room_account_data_route)
        .ruma_route::<c::tag::get_tags::v3::Request, _, _>(account_data::get_tags_route)
        .ruma_route::<c::tag::create_tag::v3::Request, _, _>(account_data::create_tag_route)
        .ruma_route::<c::tag::delete_tag::v3::Request, _, _>(account_data::delete_tag_route)
        .ruma_route::<c::receipt::create_receipt::v3::Request, _, _>(receipt::create_receipt_route)
        .ruma_route::<c::read_marker::set_read_marker::v3::Request, _, _>(receipt::set_read_marker_route)
        .ruma_route::<c::typing::create_typing_event::v3::Request, _, _>(receipt::create_typing_event_route)
        .ruma_route::<c::redact::redact_event::v3::Request, _, _>(redact::redact_event_route)
        .ruma_route::<c::discovery::get_capabilities::v3::Request, _, _>(redact::get_capabilities_route)
        .ruma_route::<c::context::get_context::v3::Request, _, _>(redact::get_context_route)
        .ruma_route::<c::room::get_event_by_timestamp::v1::Request, _, _>(redact::timestamp_to_event_route)
        .ruma_route::<c::membership::forget_room::v3::Request, _, _>(redact::forget_room_route)
        .ruma_route::<c::knock::knock_room::v3::Request, _, _>(redact::knock_room_route)
        .ruma_route_optional_trailing_slash::<c::push::get_pushrules_all::v3::Request, _, _>(
            push::get_pushrules_all_route,
        )
        .ruma_route_optional_trailing_slash::<c::push::get_pushrules_global_scope::v3::Request, _, _>(
            push::get_pushrules_global_route,
        )
        .ruma_route::<c::push::get_pushrule::v3::Request, _, _>(push::get_pushrule_route)
        .ruma_route::<c::push::set_pushrule::v3::Request, _, _>(push::set_pushrule_route)
        .ruma_route::<c::push::delete_pushrule::v3::Request, _, _>(push::delete_pushrule_route)
        .ruma_route::<c::push::get_pushrule_enabled::v3::Request, _, _>(push::get_pushrule_enabled_route)
        .ruma_route::<c::push::set_pushrule_enabled::v3::Request, _, _>(push::set_pushrule_enabled_route)
        .ruma_route::<c::push::get_pushrule_actions::v3::Request, _, _>(push::get_pushrule_actions_route)
        .ruma_route::<c::push::set_pushrule_actions::v3::Request, _, _>(push::set_pushrule_actions_route)
        .ruma_route::<c::alias::create_alias::v3::Request, _, _>(directory::create_alias_route)
        .ruma_route::<c::alias::get_alias::v3::Request, _, _>(directory::get_alias_route)
        .ruma_route::<c::alias::delete_alias::v3::Request, _, _>(directory::delete_alias_route)
        .ruma_route::<c::room::aliases::v3::Request, _, _>(directory::room_aliases_route)
        .ruma_route::<c::directory::get_room_visibility::v3::Request, _, _>(directory::get_room_visibility_route)
        .ruma_route::<c::directory::set_room_visibility::v3::Request, _, _>(directory::set_room_visibility_route)
        .ruma_route::<c::directory::get_public_rooms::v3::Request, _, _>(directory::get_public_rooms_route)
        .ruma_route::<c::directory::get_public_rooms_filtered::v3::Request, _, _>(
            directory::get_public_rooms_filtered_route,
        )
        .ruma_route::<c::keys::upload_keys::v3::Request, _, _>(keys::upload_keys_route)
        .ruma_route::<c::keys::get_keys::v3::Request, _, _>(keys::get_keys_route)
        .ruma_route::<c::keys::claim_keys::v3::Request, _, _>(keys::claim_keys_route)
        .ruma_route::<c::keys::get_key_changes::v3::Request, _, _>(keys::get_key_changes_route)
        .ruma_route::<c::keys::upload_signing_keys::v3::Request, _, _>(keys::upload_signing_keys_route)
        .ruma_route::<c::keys::upload_signatures::v3::Request, _, _>(keys::upload_signatures_route)
        .ruma_route::<c::to_device::send_event_to_device::v3::Request, _, _>(keys::send_to_device_route)
        .ruma_route::<c::backup::create_backup_version::v3::Request, _, _>(keys::create_backup_version_route)
        .ruma_route::<c::backup::update_backup_version::v3::Request, _, _>(keys::update_backup_version_route)
        .ruma_route::<c::backup::get_latest_backup_info::v3::Request, _, _>(keys::get_latest_backup_info_route)
        .ruma_route::<c::backup::get_backup_info::v3::Request, _, _>(keys::get_backup_info_route)
        .ruma_route::<c::backup::delete_backup_version::v3::Request, _, _>(keys::delete_backup_version_route)
        .ruma_route::<c::backup::add_backup_keys::v3::Request, _, _>(keys::add_backup_keys_route)
        .ruma_route::<c::backup::add_backup_keys_for_room::v3::Request, _, _>(keys::add_backup_keys_for_room_route)
        .ruma_route::<c::backup::add_backup_keys_for_session::v3::Request, _, _>(
            keys::add_backup_keys_for_session_route,
        )
        .ruma_route::<c::backup::get_backup_keys::v3::Request, _, _>(keys::get_backup_keys_route)
        .ruma_route::<c::backup::get_backup_keys_for_room::v3::Request, _, _>(keys::get_backup_keys_for_room_route)
        .ruma_route::<c::backup::get_backup_keys_for_session::v3::Request, _, _>(
            keys::get_backup_keys_for_session_route,
        )
        .ruma_route::<c::backup::delete_backup_keys::v3::Request, _, _>(keys::delete_backup_keys_route)
        .ruma_route::<c::backup::delete_backup_keys_for_room::v3::Request, _, _>(
            keys::delete_backup_keys_for_room_route,
        )
        .ruma_route::<c::backup::delete_backup_keys_for_session::v3::Request, _, _>(
            keys::delete_backup_keys_for_session_route,
        )
}
