//! The consumer side of a watch: a stream of events and progress marks fed by a watcher
//! task. Dropping the stream stops the task and unsubscribes.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, Notify};

use crate::{Error, WatchMessage};

/// Events with revision greater than the watch's start, in revision order, interleaved with
/// `Progress` marks. After an `Err` item (e.g. `Compacted`: the watcher fell behind history
/// that was compacted meanwhile) the stream ends.
pub struct WatchStream {
    pub(crate) rx: mpsc::Receiver<Result<WatchMessage, Error>>,
    pub(crate) progress: Arc<Notify>,
    pub(crate) task: tokio::task::AbortHandle,
}

impl WatchStream {
    /// The next message, or None when the stream has ended.
    pub async fn recv(&mut self) -> Option<Result<WatchMessage, Error>> {
        self.rx.recv().await
    }

    /// Asks for a `Progress` message as soon as every event already committed in the watched
    /// range has been delivered (for Kubernetes bookmarks on request).
    pub fn request_progress(&self) {
        self.progress.notify_one();
    }
}

impl futures::Stream for WatchStream {
    type Item = Result<WatchMessage, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream").finish_non_exhaustive()
    }
}
