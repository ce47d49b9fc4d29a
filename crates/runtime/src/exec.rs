//! The agent's side of an exec session: a helper (`<shim> exec`) that joins the container and
//! runs the command as its child, with pipes or a terminal for its stdio.

use std::os::fd::{AsRawFd, OwnedFd};

use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};

use crate::error::{Error, IoContext, Result};

/// A process running inside a container. Its stdio is either the three pipes or, with a
/// terminal, `pty` (the master side: read output, write input). Dropping it kills the session.
pub struct ExecProcess {
    pub(crate) child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
    pub pty: Option<tokio::fs::File>,
    pub(crate) pty_fd: Option<OwnedFd>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecExit {
    /// The command's exit code (128 + signal when it was killed; 126/127 when it could not be
    /// started, as a shell reports).
    pub code: i32,
}

impl ExecProcess {
    /// Waits for the command to finish. Close `stdin` first if the command reads it to EOF.
    pub async fn wait(&mut self) -> Result<ExecExit> {
        let status = self
            .child
            .wait()
            .await
            .ctx(|| "wait for exec helper".into())?;
        let code = status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        });
        Ok(ExecExit { code })
    }

    /// Sets the terminal size (a no-op error without a terminal).
    pub fn resize(&self, cols: u16, rows: u16) -> Result<()> {
        let fd = self
            .pty_fd
            .as_ref()
            .ok_or_else(|| Error::invalid("resize", "the exec session has no terminal"))?;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        crate::sys::cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) })
            .map(drop)
            .ctx(|| "resize terminal".into())
    }

    /// Ends the session: the helper is killed and its child dies with it.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.kill().await.ctx(|| "kill exec helper".into())
    }
}
