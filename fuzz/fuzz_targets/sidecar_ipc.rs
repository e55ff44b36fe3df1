//! Bytes from an agent on the IPC socket: line splitting (in arbitrary
//! chunks), then each line to a command or the error event its sender gets.
#![no_main]

use chatixia_sidecar::core::ipc::{Line, LineSplitter, interpret};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else { return };
    let limit = 4096;
    let mut splitter = LineSplitter::new(limit);
    let mut lines = Vec::new();
    for piece in bytes.chunks(usize::from(chunk).max(1)) {
        splitter.push(piece, &mut lines);
        for line in lines.drain(..) {
            if let Line::Text(t) = &line {
                assert!(t.len() <= limit && !t.contains('\n'));
            }
            let _ = interpret(line, limit);
        }
    }
});
