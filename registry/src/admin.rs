//! `chatixia-registry admin …`: pairing administration of a running
//! registry over its HTTP API (docs/PROTOCOL.md, Admin authentication and
//! Pairing), for operators at a shell.
//! Part of the binary only; it shares nothing with the server but the wire
//! format.
//!
//! Exit status: 0 done, 1 the registry refused or could not be reached,
//! 2 bad usage.

use chatixia_settings::text::printable;
use chatixia_settings::{ParseError, Setting, Settings};
use serde_json::Value;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

const SETTINGS: &[Setting] = &[
    Setting::value("REGISTRY_URL", Some("http://127.0.0.1:8080"), "the registry to manage").with_flag("--url"),
    Setting::value("ADMIN_KEY", None, "an admin API key (better in the environment: flags show in ps)")
        .with_flag("--key"),
    Setting::switch("ADMIN_LIST_ALL", "list: every entry, not only those awaiting approval").with_flag("--all"),
];

const ABOUT: &str = "manage pairing on a running registry";

const COMMANDS: &str = "
Commands:
  code           generate a pairing code (single use, valid 300 s)
  list [--all]   devices awaiting approval (--all: every entry)
  approve ID     let a paired device into the mesh
  reject ID      refuse a device awaiting approval
  revoke ID      shut an approved device out (closes its connections)
";

const TIMEOUT: Duration = Duration::from_secs(15);
/// Answers of the admin routes are small; a larger one is not our registry.
const MAX_ANSWER_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Code,
    List,
    Approve(String),
    Reject(String),
    Revoke(String),
}

pub fn main() -> ExitCode {
    let dotenv = std::fs::read_to_string(".env").map(|t| chatixia_settings::parse_dotenv(&t)).unwrap_or_default();
    let program = "chatixia-registry admin";
    let args = std::env::args().skip(2);
    let settings = match chatixia_settings::resolve(program, ABOUT, SETTINGS, args, |k| std::env::var(k).ok(), &dotenv)
    {
        Ok(s) => s,
        Err(ParseError::Help(text)) => {
            print!("{text}{COMMANDS}");
            return ExitCode::SUCCESS;
        }
        Err(ParseError::Invalid(msg)) => return usage_error(&msg),
    };
    match run(&settings) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(Failure::Usage(msg)) => usage_error(&msg),
        Err(Failure::Refused(msg)) => {
            eprintln!("{program}: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("chatixia-registry admin: {msg}\n(see chatixia-registry admin --help)");
    ExitCode::from(2)
}

#[derive(Debug, PartialEq, Eq)]
enum Failure {
    Usage(String),
    Refused(String),
}

fn run(settings: &Settings) -> Result<String, Failure> {
    let command = parse_command(&settings.positional).map_err(Failure::Usage)?;
    let base = base_url(settings.get("REGISTRY_URL").unwrap_or("http://127.0.0.1:8080")).map_err(Failure::Usage)?;
    let key =
        settings.get("ADMIN_KEY").ok_or_else(|| Failure::Usage("no admin key: set ADMIN_KEY or pass --key".into()))?;
    let (method, path) = match &command {
        Command::Code => ("POST", "/api/pairing/generate-code".to_owned()),
        Command::List if settings.is_on("ADMIN_LIST_ALL") => ("GET", "/api/pairing/all".to_owned()),
        Command::List => ("GET", "/api/pairing/pending".to_owned()),
        Command::Approve(id) => ("POST", format!("/api/pairing/{id}/approve")),
        Command::Reject(id) => ("POST", format!("/api/pairing/{id}/reject")),
        Command::Revoke(id) => ("POST", format!("/api/pairing/{id}/revoke")),
    };
    let (status, body) = request(method, &format!("{base}{path}"), key).map_err(Failure::Refused)?;
    if status != 200 {
        return Err(Failure::Refused(refusal(status, &body)));
    }
    let value: Value = serde_json::from_str(&body)
        .map_err(|e| Failure::Refused(format!("the registry answered something that is not JSON ({e})")))?;
    Ok(match command {
        Command::Code => format_code(&value, &base),
        Command::List => format_list(&value, settings.is_on("ADMIN_LIST_ALL")),
        Command::Approve(id) => {
            let peer = value["peer_id"].as_str().unwrap_or("?");
            format!("Approved {id}: {} is now part of the mesh.\n", printable(peer))
        }
        Command::Reject(id) => format!("Rejected {id}: its device token no longer works.\n"),
        Command::Revoke(id) => {
            format!("Revoked {id}: its connections were closed and its device token no longer works.\n")
        }
    })
}

fn parse_command(words: &[String]) -> Result<Command, String> {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let id = |id: &str| -> Result<String, String> {
        let ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok { Ok(id.to_owned()) } else { Err(format!("{id:?} is not an entry id (8 hex digits, see `list`)")) }
    };
    match words.as_slice() {
        ["code"] => Ok(Command::Code),
        ["list"] => Ok(Command::List),
        ["approve", i] => id(i).map(Command::Approve),
        ["reject", i] => id(i).map(Command::Reject),
        ["revoke", i] => id(i).map(Command::Revoke),
        ["approve" | "reject" | "revoke"] => Err(format!("{} needs the entry id", words[0])),
        [] => Err("no command given".into()),
        _ => Err(format!("unknown command {:?}", words.join(" "))),
    }
}

/// This client speaks plain HTTP only (no TLS in the binary): use it on
/// the registry's host or through a tunnel.
fn base_url(url: &str) -> Result<String, String> {
    let url = url.trim().trim_end_matches('/');
    if url.starts_with("https://") {
        return Err(format!(
            "{url}: https is not supported by this client; run it on the registry's host or through an SSH tunnel"
        ));
    }
    if !url.starts_with("http://") || url.len() <= "http://".len() {
        return Err(format!("{url:?} is not an http:// URL"));
    }
    Ok(url.to_owned())
}

fn request(method: &str, url: &str, key: &str) -> Result<(u16, String), String> {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(TIMEOUT)).build().into();
    let result = match method {
        "POST" => agent.post(url).header("X-API-Key", key).send_empty(),
        _ => agent.get(url).header("X-API-Key", key).call(),
    };
    let mut response = result.map_err(|e| format!("cannot reach the registry at {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES)
        .read_to_string()
        .map_err(|e| format!("reading the answer of {url}: {e}"))?;
    Ok((status, body))
}

/// The registry's `{"error": …}` text, with a hint where one helps.
fn refusal(status: u16, body: &str) -> String {
    let error = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().chars().take(200).collect());
    let hint = match status {
        401 => " (is the key right? set ADMIN_KEY or --key)",
        403 => " (the key is valid but not an admin key)",
        _ => "",
    };
    format!("HTTP {status}: {}{hint}", printable(&error))
}

fn format_code(value: &Value, base: &str) -> String {
    let code = value["code"].as_str().unwrap_or("?");
    let ttl = value["expires_in"].as_u64().unwrap_or(300);
    format!(
        "Pairing code: {code}  (single use, valid for {ttl} s)\n\
         On the device:  chatixia-sidecar pair --registry {base} --code {code} --name <device name>\n",
        code = printable(code)
    )
}

fn format_list(value: &Value, all: bool) -> String {
    let entries = value.as_array().map(Vec::as_slice).unwrap_or_default();
    if entries.is_empty() {
        return if all { "No paired devices.\n".into() } else { "No devices awaiting approval.\n".into() };
    }
    let header = ["ID", "STATUS", "PEER ID", "NAME", "PAIRED (UTC)", "INVITED BY"];
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            let field = |k: &str| printable(e[k].as_str().unwrap_or(""));
            [
                field("id"),
                field("status"),
                field("peer_id"),
                field("agent_name"),
                utc(&e["created_at"]),
                field("invited_by"),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut l = String::new();
        for (cell, w) in cells.iter().zip(widths) {
            let _ = write!(l, "{cell:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header.map(str::to_owned));
    for row in &rows {
        line(row);
    }
    out
}

/// Epoch seconds as `YYYY-MM-DD HH:MM:SS`.
fn utc(v: &Value) -> String {
    let Some(secs) = v.as_f64() else { return "?".into() };
    match time::OffsetDateTime::from_unix_timestamp(secs as i64) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn commands_parse_and_ids_are_checked() {
        assert_eq!(parse_command(&words("code")), Ok(Command::Code));
        assert_eq!(parse_command(&words("list")), Ok(Command::List));
        assert_eq!(parse_command(&words("approve 0a1b2c3d")), Ok(Command::Approve("0a1b2c3d".into())));
        assert_eq!(parse_command(&words("revoke ab")), Ok(Command::Revoke("ab".into())));
        for bad in ["", "approve", "approve a/b", "reject ../x", "dance", "list extra", "approve a b"] {
            assert!(parse_command(&words(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_plain_http_urls() {
        assert_eq!(base_url("http://h:8080/").unwrap(), "http://h:8080");
        assert!(base_url("https://h").unwrap_err().contains("https"));
        assert!(base_url("h:8080").is_err());
        assert!(base_url("http://").is_err());
    }

    #[test]
    fn listing_is_a_table_without_escape_sequences() {
        let entries = json!([
            {"id": "0a1b2c3d", "status": "pending_approval", "peer_id": "agent-a1b2c3", "agent_name": "kitchen\u{1b}[2J",
             "created_at": 1_800_000_000.5, "updated_at": 1_800_000_000.5, "invited_by": "ops"},
            {"id": "ffffffff", "status": "approved", "peer_id": "agent-000001", "agent_name": "x",
             "created_at": 0, "updated_at": 0}
        ]);
        let text = format_list(&entries, true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ID        STATUS            PEER ID"), "{text}");
        assert!(lines[1].contains("kitchen?[2J") && lines[1].contains("2027-01-15 08:00:00"), "{text}");
        assert!(lines[2].starts_with("ffffffff  approved") && lines[2].contains("1970-01-01 00:00:00"), "{text}");
        assert!(!text.contains('\u{1b}'));
        assert_eq!(format_list(&json!([]), false), "No devices awaiting approval.\n");
        assert_eq!(format_list(&json!([]), true), "No paired devices.\n");
    }

    #[test]
    fn refusals_name_the_status_and_the_registry_error() {
        assert_eq!(refusal(404, r#"{"error":"not found or not pending"}"#), "HTTP 404: not found or not pending");
        assert!(refusal(401, "").contains("ADMIN_KEY"));
        assert!(refusal(403, r#"{"error":"admin role required"}"#).contains("not an admin key"));
    }

    #[test]
    fn code_output_tells_what_to_run_on_the_device() {
        let text = format_code(&json!({"code": "042424", "expires_in": 300}), "http://reg:8080");
        assert!(text.contains("Pairing code: 042424"), "{text}");
        assert!(text.contains("chatixia-sidecar pair --registry http://reg:8080 --code 042424"), "{text}");
    }
}
