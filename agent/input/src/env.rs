//! The one rule for an environment variable a client asks for (a bot's, an MCP server's, an exec's),
//! checked by berthd when it is stored and by the agent when it starts a process.

/// A name of 1-255 printable ASCII characters (no space, no `=`); a value without NUL (the kernel's
/// strings end there). The error says which and what to do.
pub fn check(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 || !name.bytes().all(|b| b.is_ascii_graphic() && b != b'=') {
        return Err(format!(
            "environment variable name {name:?} is invalid: use 1-255 printable ASCII characters, no `=` or space"
        ));
    }
    if value.contains('\0') {
        return Err(format!("environment variable {name}: the value contains a NUL byte"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn names_and_values() {
        assert!(check("PATH", "/bin:/usr/bin").is_ok());
        assert!(check("a.b-c_1", "").is_ok());
        assert!(check(&"N".repeat(255), "v").is_ok());
        for bad in ["", "A=B", "A B", "é", "A\tB"] {
            assert!(check(bad, "v").unwrap_err().contains("is invalid"), "{bad:?}");
        }
        assert!(check(&"N".repeat(256), "v").is_err());
        assert!(check("A", "x\0y").unwrap_err().contains("NUL"));
    }
}
