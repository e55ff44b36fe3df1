//! The agents' Unix socket (docs/PROTOCOL.md "IPC"): binding it, accepting
//! agents and moving their bytes to and from the core's [`AgentHub`].
//! Everything runs on the sidecar's one executor thread, hence `Rc`.

use std::cell::RefCell;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use async_executor::LocalExecutor;
use chatixia_protocol::ipc::{Command, Event};
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use super::reactor::{Async, Timer};

use crate::core::ipc::{AgentHub, AgentId, LineSplitter, interpret};

/// The bound IPC socket file; removed when dropped.
pub struct IpcSocket {
    pub listener: UnixListener,
    path: PathBuf,
}

impl IpcSocket {
    /// Binds `path` with mode 0660 (docs/PROTOCOL.md §6). A file left by a dead
    /// sidecar is replaced; one that a live process still listens on is not.
    pub fn bind(path: &Path) -> Result<IpcSocket, String> {
        let shown = path.display();
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(format!("another process is serving {shown}; is a second sidecar running?"));
            }
            std::fs::remove_file(path).map_err(|e| format!("cannot remove stale socket {shown}: {e}"))?;
            log::info!("removed stale socket {shown}");
        }
        let listener = UnixListener::bind(path).map_err(|e| format!("cannot bind {shown}: {e}"))?;
        let socket = IpcSocket { listener, path: path.to_owned() };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| format!("cannot set the mode of {shown}: {e}"))?;
        Ok(socket)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for IpcSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Accepts agents forever. Their commands go to `commands`; a full channel
/// stops reading from the agents (the mesh takes commands in batches).
pub async fn serve(
    ex: Rc<LocalExecutor<'static>>,
    listener: Async<UnixListener>,
    hub: Rc<RefCell<AgentHub>>,
    commands: async_channel::Sender<(AgentId, Command)>,
) {
    let mut refused = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, _)) if hub.borrow().is_full() => {
                refused += 1;
                // One line per burst of refusals, not one per connection.
                if refused == 1 || refused.is_power_of_two() {
                    log::warn!("IPC connection refused: too many agents attached ({refused} refused so far)");
                }
                let line = hub.borrow().refusal();
                ex.spawn(async move {
                    // The line fits any socket buffer; the timer only guards
                    // against a kernel that says otherwise.
                    let write = async { (&stream).write_all(line.as_bytes()).await.ok() };
                    futures_lite::future::or(write, async {
                        Timer::after(std::time::Duration::from_secs(1)).await;
                        None
                    })
                    .await;
                })
                .detach();
            }
            Ok((stream, _)) => {
                let id = hub.borrow_mut().attach();
                log::info!("agent {id} attached");
                ex.spawn(agent(id, stream, hub.clone(), commands.clone())).detach();
            }
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                log::warn!("IPC accept failed: {e}");
                Timer::after(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn agent(
    id: AgentId,
    stream: Async<UnixStream>,
    hub: Rc<RefCell<AgentHub>>,
    commands: async_channel::Sender<(AgentId, Command)>,
) {
    let reader = async {
        let limit = hub.borrow().config().max_line_bytes;
        let mut splitter = LineSplitter::new(limit);
        let mut buf = vec![0u8; 64 * 1024];
        let mut lines = Vec::new();
        loop {
            let n = match (&stream).read(&mut buf).await {
                Ok(0) => return "closed the connection".to_owned(),
                Ok(n) => n,
                Err(e) => return format!("read failed: {e}"),
            };
            // A short read emptied the socket: the next bytes come with an
            // edge of their own, so no read that can only say "nothing yet".
            let emptied = n < buf.len();
            splitter.push(&buf[..n], &mut lines);
            for line in lines.drain(..) {
                match interpret(line, limit) {
                    Ok(cmd) => {
                        if commands.send((id, cmd)).await.is_err() {
                            return "sidecar is stopping".to_owned();
                        }
                    }
                    Err(error) => hub.borrow_mut().deliver(Some(id), &Event::Error(*error)),
                }
            }
            if emptied && let Err(e) = stream.readable().await {
                return format!("waiting to read failed: {e}");
            }
        }
    };
    let writer = async {
        loop {
            let next = std::future::poll_fn(|cx| hub.borrow_mut().poll_line(id, cx)).await;
            let Some(line) = next else { return "was disconnected".to_owned() };
            let write = async { (&stream).write_all(line.as_bytes()).await };
            let kicked = std::future::poll_fn(|cx| hub.borrow_mut().poll_kicked(id, cx));
            match futures_lite::future::or(async { Some(write.await) }, async {
                kicked.await;
                None
            })
            .await
            {
                Some(Ok(())) => {}
                Some(Err(e)) => return format!("write failed: {e}"),
                None => return "was disconnected for not reading".to_owned(),
            }
        }
    };
    let why = futures_lite::future::or(reader, writer).await;
    hub.borrow_mut().detach(id);
    log::info!("agent {id} detached: {why}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_is_private_replaces_stale_files_and_is_removed() {
        let dir = std::env::temp_dir().join(format!("chatixia-ipc-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        // A stale socket file whose process is gone.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let sock = IpcSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let err = IpcSocket::bind(&path).err().expect("second bind refused");
        assert!(err.contains("another process"), "{err}");
        assert!(path.exists(), "a live socket must not be removed");
        drop(sock);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
