//! Console sessions: a login with a tenant's API token makes a session,
//! kept on the server; the browser holds only its random id, in an
//! HttpOnly, SameSite=Strict cookie. Each session has its own CSRF token,
//! which every POST form carries in a hidden field.
//!
//! The raw token never leaves the login request: a stolen cookie is worth
//! a session (ended by logout, expiry or a restart), not the tenant's API
//! token. Sessions live in this process only: a restart logs everyone
//! out, and the servers of a cluster each know their own (a load balancer
//! in front of several needs sticky sessions).

use std::time::{Duration, Instant};

use dashmap::DashMap;

/// The cookie's name.
pub const COOKIE: &str = "stoa_session";
/// A session ends this long after its login, used or not.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; past it the oldest is dropped.
const MAX_SESSIONS: usize = 10_000;

/// One logged-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    pub tenant: String,
    /// The form field `csrf` of every POST must equal it.
    pub csrf: String,
    created: Instant,
}

/// Every live session, by id.
#[derive(Default)]
pub struct Sessions {
    by_id: DashMap<String, Session>,
}

/// 32 random bytes as 64 hex digits.
fn random_id() -> String {
    let mut bytes = [0u8; 32];
    // The OS's generator; failing it is failing to log in, never a weak id.
    getrandom::fill(&mut bytes).expect("the operating system's random generator");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Sessions {
    /// A new session of `tenant`: (its id, for the cookie; the session).
    pub fn open(&self, tenant: &str) -> (String, Session) {
        if self.by_id.len() >= MAX_SESSIONS {
            self.by_id.retain(|_, s| s.created.elapsed() < LIFETIME);
            if self.by_id.len() >= MAX_SESSIONS {
                let oldest = self.by_id.iter().min_by_key(|e| e.value().created).map(|e| e.key().clone());
                if let Some(k) = oldest {
                    self.by_id.remove(&k);
                }
            }
        }
        let session = Session { tenant: tenant.to_string(), csrf: random_id(), created: Instant::now() };
        let id = random_id();
        self.by_id.insert(id.clone(), session.clone());
        (id, session)
    }

    /// The live session with this id.
    pub fn get(&self, id: &str) -> Option<Session> {
        let s = self.by_id.get(id)?.clone();
        if s.created.elapsed() >= LIFETIME {
            self.by_id.remove(id);
            return None;
        }
        Some(s)
    }

    pub fn close(&self, id: &str) {
        self.by_id.remove(id);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').filter_map(|kv| kv.trim().split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// The `Set-Cookie` value of a new session.
pub fn set_cookie(id: &str) -> String {
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", LIFETIME.as_secs())
}

/// The `Set-Cookie` value that ends it in the browser.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Equal, in time that does not depend on where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_hex_and_sessions_end() {
        let s = Sessions::default();
        let (a, sa) = s.open("a");
        let (b, _) = s.open("a");
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_ne!(a, sa.csrf);
        assert_eq!(s.get(&a).unwrap().tenant, "a");
        s.close(&a);
        assert!(s.get(&a).is_none());
        assert!(s.get("").is_none());
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        assert_eq!(cookie("x=1; stoa_session=abc; y=2", COOKIE), Some("abc"));
        assert_eq!(cookie("stoa_session_x=abc", COOKIE), None);
        assert_eq!(cookie("", COOKIE), None);
        assert!(set_cookie("abc").contains("HttpOnly; SameSite=Strict"));
    }

    #[test]
    fn comparison_is_exact() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }
}
