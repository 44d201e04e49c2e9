//! Bearer tokens to tenants. Every request must carry
//! `authorization: Bearer <token>`; the tenant goes into the request's
//! extensions, and every handler reads it from there.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Status};

#[derive(Clone, Debug)]
pub struct Tenant(pub String);

#[derive(Clone)]
pub struct Auth {
    tokens: Arc<HashMap<String, String>>,
}

impl Auth {
    pub fn new(tokens: HashMap<String, String>) -> Auth {
        Auth { tokens: Arc::new(tokens) }
    }

    /// The tenant a token belongs to (the console's login).
    pub fn tenant_for(&self, token: &str) -> Option<String> {
        self.tokens.get(token).cloned()
    }

    pub fn check<T>(&self, mut req: Request<T>) -> Result<Request<T>, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>` metadata"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("the authorization metadata must be `Bearer <token>`"))?;
        let tenant = self.tokens.get(token.trim()).ok_or_else(|| Status::unauthenticated("unknown token"))?;
        req.extensions_mut().insert(Tenant(tenant.clone()));
        Ok(req)
    }
}

/// The tenant of an authenticated request.
pub fn tenant<T>(req: &Request<T>) -> Result<String, Status> {
    req.extensions().get::<Tenant>().map(|t| t.0.clone()).ok_or_else(|| Status::unauthenticated("not authenticated"))
}
