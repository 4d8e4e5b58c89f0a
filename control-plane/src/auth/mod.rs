//! Who may call: the API tokens berthd accepts and what each may act on ([`Scope`]), as plain data with
//! no transport in it. The gRPC API (`api/`) and the MCP HTTP front-end (`mcp/http.rs`) each check a
//! request's token against these in their own way.

mod scope;

use std::sync::Arc;

use subtle::ConstantTimeEq;

pub use scope::Scope;

/// Accepted API tokens, each with its [`Scope`]; none = no authentication (only for a private Unix
/// socket).
#[derive(Clone, Default)]
pub struct ApiTokens(Arc<Vec<(Vec<u8>, Scope)>>);

impl std::fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiTokens({} configured)", self.0.len())
    }
}

impl ApiTokens {
    /// Parses a token file: one token per line, optionally followed by `bots=NAME,…` (see [`scope`]);
    /// blank lines and `#` comments are skipped. Errors name the line, never the token.
    pub fn parse(text: &str) -> Result<ApiTokens, String> {
        let mut tokens = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (token, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            if token.len() < 16 {
                return Err(format!("line {}: the token is shorter than 16 characters", i + 1));
            }
            let scope = Scope::parse(rest).map_err(|e| format!("line {}: {e}", i + 1))?;
            tokens.push((token.as_bytes().to_vec(), scope));
        }
        Ok(ApiTokens(Arc::new(tokens)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The scope of a presented token, if it is one of ours. Compares against every token (no early
    /// exit), so the time taken says nothing about the tokens.
    pub fn verify(&self, presented: &[u8]) -> Option<Scope> {
        let mut matched = None;
        for (token, scope) in self.0.iter() {
            if bool::from(presented.ct_eq(token)) && matched.is_none() {
                matched = Some(scope.clone());
            }
        }
        matched
    }
}
