//! The log contract: one JSON object a line on stdout, `{"ts", "node", "event", ...facts}`, and a
//! human-readable line on stderr for every event. The lab matches checkpoints on these facts, so every fact
//! written here must be true of the connection it names.

use std::io::Write;
use std::sync::OnceLock;

use serde_json::{Map, Value};

static NODE: OnceLock<&'static str> = OnceLock::new();

/// Sets the `node` field of every event (`relay`, `server`, `client`). Call once at start.
pub fn set_node(node: &'static str) {
    let _ = NODE.set(node);
}

fn node() -> &'static str {
    NODE.get().copied().unwrap_or("peer")
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Writes one event. `facts` must be a JSON object; its keys are added after `ts`, `node` and `event`.
pub fn emit(event: &str, facts: Value) {
    let mut object = Map::new();
    object.insert("ts".into(), Value::String(now()));
    object.insert("node".into(), Value::String(node().into()));
    object.insert("event".into(), Value::String(event.into()));
    let mut human = String::new();
    if let Value::Object(facts) = facts {
        for (key, value) in facts {
            match &value {
                Value::String(text) => human.push_str(&format!(" {key}={text}")),
                other => human.push_str(&format!(" {key}={other}")),
            }
            object.insert(key, value);
        }
    }
    let line = Value::Object(object).to_string();
    // One write per line, so lines from several tasks never interleave mid-line.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
    drop(stdout);
    say(&format!("{event}{human}"));
}

/// A human line on stderr (never parsed by the lab).
pub fn say(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "[{}] {}: {text}", now(), node());
}
