//! A shared informer: one list+watch per kind, an in-memory copy of every object, and
//! change notifications for the controllers that care. Several controllers read the same
//! informer (the ReplicaSet controller and the garbage collector both read pods), so the
//! server holds one watch per kind, not one per controller.
//!
//! kube's watcher does the list, watch, re-list after 410 Gone and backoff; this adds the
//! cache and fans each change out to handlers. A re-list is diffed against the cache so a
//! deletion missed while the watch was down still reaches the handlers.

use futures::StreamExt;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, RwLock};

/// Names one object: namespace ("" for cluster-scoped kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Key {
        Key {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn of<K: Resource>(obj: &K) -> Key {
        Key::new(obj.namespace().unwrap_or_default(), obj.name_any())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// What happened to one object.
pub enum Change<'a, K> {
    Applied { old: Option<&'a K>, new: &'a K },
    Deleted(&'a K),
}

impl<K> Change<'_, K> {
    /// The object as it is now (or was when deleted).
    pub fn object(&self) -> &K {
        match self {
            Change::Applied { new, .. } => new,
            Change::Deleted(o) => o,
        }
    }
}

type Handler<K> = Box<dyn Fn(&Change<'_, K>) + Send + Sync>;

pub struct Informer<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Informer {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<K> {
    objects: RwLock<HashMap<Key, Arc<K>>>,
    handlers: Mutex<Vec<Handler<K>>>,
    synced: tokio::sync::watch::Sender<bool>,
    kind: &'static str,
}

impl<K> Informer<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Creates the informer; nothing is listed until `start`. Register handlers first so
    /// they see the initial list.
    pub fn new(kind: &'static str) -> Informer<K> {
        Informer {
            inner: Arc::new(Inner {
                objects: RwLock::new(HashMap::new()),
                handlers: Mutex::new(Vec::new()),
                synced: tokio::sync::watch::channel(false).0,
                kind,
            }),
        }
    }

    /// Calls `f` for every change, from the informer's task. `f` must be quick (it
    /// usually just queues a key).
    pub fn on_change(&self, f: impl Fn(&Change<'_, K>) + Send + Sync + 'static) {
        self.inner.handlers.lock().unwrap().push(Box::new(f));
    }

    /// Runs list+watch of every object until `shutdown` resolves.
    pub fn start(
        &self,
        api: Api<K>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        self.start_with(api, watcher::Config::default(), shutdown)
    }

    /// Runs list+watch of the objects `cfg` selects until `shutdown` resolves.
    pub fn start_with(
        &self,
        api: Api<K>,
        cfg: watcher::Config,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let kind = inner.kind;
            let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
            let mut relist: Option<HashMap<Key, Arc<K>>> = None;
            tokio::pin!(shutdown);
            loop {
                let ev = tokio::select! {
                    _ = &mut shutdown => break,
                    ev = stream.next() => ev,
                };
                match ev {
                    None => break,
                    Some(Err(e)) => {
                        tracing::warn!(kind, error = %e, "informer watch failed; retrying")
                    }
                    Some(Ok(Event::Init)) => relist = Some(HashMap::new()),
                    Some(Ok(Event::InitApply(o))) => {
                        if let Some(m) = relist.as_mut() {
                            m.insert(Key::of(&o), Arc::new(o));
                        }
                    }
                    Some(Ok(Event::InitDone)) => {
                        if let Some(m) = relist.take() {
                            inner.replace_all(m);
                        }
                        inner.synced.send_replace(true);
                    }
                    Some(Ok(Event::Apply(o))) => inner.apply(o),
                    Some(Ok(Event::Delete(o))) => inner.delete(o),
                }
            }
            tracing::debug!(kind, "informer stopped");
        })
    }

    /// Resolves once the first list is in the cache.
    /// Whether the first list is in.
    pub fn is_synced(&self) -> bool {
        *self.inner.synced.borrow()
    }

    pub async fn synced(&self) {
        let mut rx = self.inner.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub fn get(&self, key: &Key) -> Option<Arc<K>> {
        self.inner.objects.read().unwrap().get(key).cloned()
    }

    /// Every cached object for which `keep` is true.
    pub fn list(&self, keep: impl Fn(&K) -> bool) -> Vec<Arc<K>> {
        self.inner
            .objects
            .read()
            .unwrap()
            .values()
            .filter(|o| keep(o))
            .cloned()
            .collect()
    }

    /// Every cached object in `namespace`.
    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        self.list(|o| o.meta().namespace.as_deref().unwrap_or("") == namespace)
    }
}

impl<K: Resource> Inner<K> {
    fn notify(&self, change: Change<'_, K>) {
        for h in self.handlers.lock().unwrap().iter() {
            h(&change);
        }
    }

    fn apply(&self, obj: K) {
        let key = Key::of(&obj);
        let new = Arc::new(obj);
        let old = self.objects.write().unwrap().insert(key, new.clone());
        self.notify(Change::Applied {
            old: old.as_deref(),
            new: &new,
        });
    }

    fn delete(&self, obj: K) {
        let key = Key::of(&obj);
        let cached = self.objects.write().unwrap().remove(&key);
        self.notify(Change::Deleted(cached.as_deref().unwrap_or(&obj)));
    }

    /// Swaps in a fresh list, telling handlers what appeared, changed or vanished since.
    fn replace_all(&self, fresh: HashMap<Key, Arc<K>>) {
        let old = std::mem::replace(&mut *self.objects.write().unwrap(), fresh.clone());
        for (key, obj) in &fresh {
            let prev = old.get(key);
            let unchanged = prev.is_some_and(|p| {
                p.meta().resource_version.is_some()
                    && p.meta().resource_version == obj.meta().resource_version
            });
            if !unchanged {
                self.notify(Change::Applied {
                    old: prev.map(|p| &**p),
                    new: obj,
                });
            }
        }
        for (key, obj) in &old {
            if !fresh.contains_key(key) {
                self.notify(Change::Deleted(obj));
            }
        }
    }
}
