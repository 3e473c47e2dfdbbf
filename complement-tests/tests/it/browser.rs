//! A browser without JavaScript for the server's own pages: it keeps the
//! cookies the server sets (checking their flags), posts forms, and does
//! not follow redirects, so the tests read them.

use std::collections::BTreeMap;

use complement_tests::Server;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

pub(crate) struct Browser {
    http: reqwest::Client,
    cookies: BTreeMap<String, String>,
}

/// The value of the hidden (or filled-in) field `name` in a page.
pub(crate) fn field(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap_or_else(|| panic!("no {name} in {html}")) + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

pub(crate) fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

pub(crate) fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

impl Browser {
    pub(crate) fn new(s: &Server) -> Self {
        let http = reqwest::Client::builder()
            .tls_certs_only([s.certificate()])
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self { http, cookies: BTreeMap::new() }
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    pub(crate) fn has_cookie(&self, name: &str) -> bool {
        self.cookies.contains_key(name)
    }

    pub(crate) async fn get(&mut self, url: &str) -> (u16, String) {
        let response = self.http.get(url).header(COOKIE, self.cookie_header()).send().await.unwrap();
        self.keep_cookies(&response);
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Posts a form; returns the status, the Location header and the page.
    pub(crate) async fn post(&mut self, url: &str, body: String) -> (u16, Option<String>, String) {
        let response = self
            .http
            .post(url)
            .header(COOKIE, self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        self.keep_cookies(&response);
        let location = response.headers().get(LOCATION).map(|v| v.to_str().unwrap().to_owned());
        (response.status().as_u16(), location, response.text().await.unwrap())
    }

    /// Fills in and posts the password form of the sign-in `page`
    /// (`redirect_url` empty: the account page).
    pub(crate) async fn sign_in(
        &mut self,
        s: &Server,
        page: &str,
        redirect_url: &str,
        user: &str,
        password: &str,
    ) -> (u16, Option<String>, String) {
        let body = form(&[
            ("csrf", &field(page, "csrf")),
            ("redirect_url", redirect_url),
            ("username", user),
            ("password", password),
        ]);
        self.post(&format!("{}/_hearth/sso/password", s.url), body).await
    }

    fn keep_cookies(&mut self, response: &reqwest::Response) {
        for set in response.headers().get_all(SET_COOKIE) {
            let set = set.to_str().unwrap();
            assert!(set.contains("Secure") && set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
            assert!(set.starts_with("__Host-") && set.contains("Path=/"), "{set}");
            let (name, value) = set.split(';').next().unwrap().split_once('=').unwrap();
            if set.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }
}
