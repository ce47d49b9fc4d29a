//! The consumer side of a watch: a stream of events and progress marks. The backend's
//! watcher runs inside `poll_next`, in the consumer's task, so a watch costs no task or
//! channel of its own; dropping the stream unsubscribes.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

use crate::{Error, WatchMessage};

pub(crate) type BoxWatch = Pin<Box<dyn Stream<Item = Result<WatchMessage, Error>> + Send>>;

/// Events with revision greater than the watch's start, in revision order, interleaved with
/// `Progress` marks. After an `Err` item (e.g. `Compacted`: the watcher fell behind history
/// that was compacted meanwhile, or `Closed`) the stream ends.
pub struct WatchStream {
    // Only ever used through `&mut self` (`get_mut`, no locking); the Mutex makes the stream
    // Sync so that `request_progress` can be called through a shared reference.
    inner: Mutex<BoxWatch>,
    progress: mpsc::Sender<()>,
}

impl WatchStream {
    pub(crate) fn new(inner: BoxWatch, progress: mpsc::Sender<()>) -> WatchStream {
        WatchStream {
            inner: Mutex::new(inner),
            progress,
        }
    }

    /// The next message, or None when the stream has ended.
    pub async fn recv(&mut self) -> Option<Result<WatchMessage, Error>> {
        futures::StreamExt::next(self).await
    }

    /// Asks for a `Progress` message as soon as every event already committed in the watched
    /// range has been delivered (for Kubernetes bookmarks on request).
    pub fn request_progress(&self) {
        // A full channel means a request is already pending: nothing to add.
        let _ = self.progress.try_send(());
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchMessage, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        inner.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream").finish_non_exhaustive()
    }
}
