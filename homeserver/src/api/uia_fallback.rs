//! The user-interactive auth fallback page (`/auth/{type}/fallback/web`) for
//! Hearth's `org.hearth.login.totp` stage, so that clients that do not know
//! the stage can send the user to a browser to enter the code. The page
//! completes the stage in the UIA session and then runs the script the spec
//! prescribes (`onAuthDone` or `postMessage("authDone")`), served as a file
//! so that the pages' content security policy can keep inline scripts out.

use std::sync::Arc;

use axum::{
    Router,
    extract::{Path, Query, Request, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;

use super::{
    AppState,
    pages::{code_form_page, csrf_ok, message_page, or_page, page, read_form},
};
use crate::{
    service::{Services, audit::AuditKind, password_auth, uiaa},
    util::random_string,
};

const SUBMIT_PATH: &str = "/_hearth/uia/totp";
const DONE_SCRIPT_PATH: &str = "/_hearth/uia/auth-done.js";
/// The spec's completion script.
const DONE_SCRIPT: &str = "if (window.onAuthDone) {\n    window.onAuthDone();\n} else if (window.opener && \
                           window.opener.postMessage) {\n    window.opener.postMessage(\"authDone\", \"*\");\n}\n";

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/_matrix/client/v3/auth/{auth_type}/fallback/web", get(fallback))
        .route("/_matrix/client/r0/auth/{auth_type}/fallback/web", get(fallback))
        .route(SUBMIT_PATH, post(submit))
        .route(DONE_SCRIPT_PATH, get(done_script))
}

#[derive(Deserialize)]
struct SessionQuery {
    session: Option<String>,
}

#[derive(Deserialize)]
struct CodeForm {
    csrf: String,
    session: String,
    code: String,
}

fn code_page(status: StatusCode, session: &str, message: Option<&str>) -> Response {
    let intro = "Enter the code from your authenticator app, or one of your recovery codes, to confirm.";
    code_form_page(status, "Confirm it is you", intro, SUBMIT_PATH, ("session", session), message)
}

async fn fallback(Path(auth_type): Path<String>, Query(query): Query<SessionQuery>) -> Response {
    if auth_type != uiaa::TOTP {
        return message_page(StatusCode::NOT_FOUND, "There is no fallback page for this kind of authentication.");
    }
    let Some(session) = query.session else {
        return message_page(StatusCode::BAD_REQUEST, "The link has no session.");
    };
    code_page(StatusCode::OK, &session, None)
}

async fn submit(State(s): State<Arc<Services>>, request: Request) -> Response {
    let (headers, remote, form) = or_page!(read_form::<CodeForm>(&s, request).await);
    if !csrf_ok(&headers, &form.csrf) {
        return message_page(StatusCode::FORBIDDEN, "This form expired. Go back to your app and try again.");
    }
    let Some(user_id) = s.uiaa.pending_stage_user(&form.session, uiaa::TOTP) else {
        return message_page(
            StatusCode::FORBIDDEN,
            "This confirmation is not waiting for a code (it expired, or the password step is not done yet).",
        );
    };
    match password_auth::verify_code(&s, &user_id, &form.code, &remote, AuditKind::MfaFailed).await {
        Ok(()) => {
            s.uiaa.complete_out_of_band(&form.session, uiaa::TOTP);
            let body = format!("<p>Done. You can go back to your app.</p><script src=\"{DONE_SCRIPT_PATH}\"></script>");
            let mut response = page(StatusCode::OK, "Confirmed", &body, &random_string(32));
            response.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'",
                ),
            );
            response
        }
        Err(e) if matches!(e.kind(), crate::error::ErrorKind::LimitExceeded { .. }) => message_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed attempts. The account is locked for a while; try again later.",
        ),
        Err(_) => {
            code_page(StatusCode::FORBIDDEN, &form.session, Some("That code is not valid (or was already used)."))
        }
    }
}

async fn done_script() -> Response {
    let mut response = (StatusCode::OK, DONE_SCRIPT).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
    response
}
