//! The JSON shapes of the wire contract as both daemons parse them:
//! signaling envelopes, mesh messages read from a DataChannel, agents'
//! commands, and the ICE configuration.
#![no_main]

use chatixia_protocol::ipc::Command;
use chatixia_protocol::mesh::MeshMessage;
use chatixia_protocol::signaling::{Envelope, EnvelopeRef};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(env) = EnvelopeRef::parse(text) {
        let _ = env.payload.map(|p| p.get().len());
    }
    if let Ok(env) = serde_json::from_str::<Envelope>(text) {
        // What we parse we can write back and parse again.
        let again: Envelope = serde_json::from_str(&serde_json::to_string(&env).unwrap()).unwrap();
        assert_eq!(again.kind, env.kind);
    }
    if let Ok(m) = serde_json::from_str::<MeshMessage>(text) {
        let again: MeshMessage = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(again.kind, m.kind);
    }
    let _ = Command::parse(text);
});
