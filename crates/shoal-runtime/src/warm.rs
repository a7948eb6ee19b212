//! The warm pool: Node and Python runtime processes started ahead of need, which take a
//! function when a pool of the dispatcher launches an instance, so a cold start costs the
//! handler module's load instead of a sandbox, an interpreter and the bootstrap.
//!
//! A pooled process holds nothing of any function until it is assigned one, and then one
//! only: it runs in its own sandbox (its own uid, namespaces, seccomp, cgroups) whose
//! `/var/task` is an empty directory of its own; at assignment the function's verified
//! code tree is hard-linked into that directory (read-only files, a read-only mount, a
//! uid that owns none of them) and its environment arrives in the ASSIGN frame
//! (`native::assign`). Processes are pooled per *shape* — runtime, memory size (V8's heap
//! flag and the memory cgroup are set at start) and `/tmp` size — for the shapes of the
//! registered Node and Python functions; a function whose environment sets variables its
//! interpreter reads before any code runs (`NODE_*`, `PYTHON*`) starts fresh.
//!
//! The pool's memory counts in the host budget: a process is pooled only while the budget
//! has room for it and one more instance of its shape, each holds a ticket until it is
//! assigned (then the instance's own ticket counts it), and when the budget refuses an
//! instance the pool gives its processes back.
//!
//! This module decides what to keep warm; spawning and assigning are `native`'s.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_dispatch::{HostBudget, Ticket};

use crate::native::{self, Interpreter, Pooled, RuntimeSpawn};
use crate::{cgroup, process, sandbox, FunctionCode, LogSink, RuntimeKind};

/// Distinct shapes kept warm at most (the most recently registered win).
const MAX_SHAPES: usize = 4;
/// After a pooled start fails, the shape is not tried again for this long.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// How often the pool checks its processes are alive and the budget is not short.
const CHECK_PERIOD: Duration = Duration::from_secs(1);

/// What a pooled process must match to take a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shape {
    pub runtime: RuntimeKind,
    pub memory_mb: u64,
    pub ephemeral_storage_mb: u64,
}

impl Shape {
    /// The shape a function's instances need, if the pool can serve it.
    pub fn of(code: &FunctionCode) -> Option<Shape> {
        let read_at_start = match code.runtime {
            RuntimeKind::Node => "NODE_",
            RuntimeKind::Python => "PYTHON",
            RuntimeKind::Provided => return None,
        };
        let eligible = !code.env.keys().any(|k| k.starts_with(read_at_start));
        eligible.then_some(Shape {
            runtime: code.runtime,
            memory_mb: code.memory_mb,
            ephemeral_storage_mb: code.ephemeral_storage_mb,
        })
    }
}

/// One shape's warm processes, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmShape {
    pub shape: Shape,
    /// Pids of the processes ready to take a function.
    pub ready: Vec<u32>,
    /// Processes starting.
    pub starting: usize,
    /// Why the last pooled start of this shape failed, if it did.
    pub last_error: Option<String>,
}

/// What the pool needs to start processes: the launcher's pieces, cloned.
pub(crate) struct Spawner {
    pub node: PathBuf,
    pub bootstrap: PathBuf,
    pub instances_dir: PathBuf,
    pub sandbox: Arc<sandbox::Sandbox>,
    pub cgroups: Option<Arc<cgroup::Root>>,
    pub logs: Arc<dyn LogSink>,
    pub start_timeout: Duration,
    /// The environment every process gets before it has a function.
    pub env: Vec<(String, String)>,
    /// The Python interpreter, when Python functions can run here.
    pub python: Option<crate::python::Install>,
    pub python_bootstrap: PathBuf,
}

struct Warm {
    pooled: Pooled,
    _ticket: Option<Ticket>,
}

#[derive(Default)]
struct ShapeState {
    ready: Vec<Warm>,
    starting: usize,
    /// Processes taken whose instance is still starting (see [`Assigning`]).
    assigning: usize,
    /// Registration order, to drop the oldest shape beyond [`MAX_SHAPES`].
    wanted_at: u64,
    failed_at: Option<std::time::Instant>,
    last_error: Option<String>,
}

impl ShapeState {
    /// Processes to start for the shape to hold `size`: a process being assigned still
    /// counts, so its replacement waits for the instance's start (see [`Assigning`]).
    fn lacking(&self, size: usize) -> usize {
        size.saturating_sub(self.ready.len() + self.starting + self.assigning)
    }
}

pub(crate) struct WarmPool {
    size: usize,
    spawner: Spawner,
    shapes: Mutex<HashMap<Shape, ShapeState>>,
    budget: Mutex<Option<Arc<HostBudget>>>,
    next_id: AtomicU64,
    wants: AtomicU64,
}

impl WarmPool {
    pub fn new(size: usize, spawner: Spawner) -> Arc<WarmPool> {
        let pool = Arc::new(WarmPool {
            size,
            spawner,
            shapes: Mutex::new(HashMap::new()),
            budget: Mutex::new(None),
            next_id: AtomicU64::new(1),
            wants: AtomicU64::new(0),
        });
        if let (true, Ok(runtime)) = (size > 0, tokio::runtime::Handle::try_current()) {
            let weak = Arc::downgrade(&pool);
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(CHECK_PERIOD);
                loop {
                    tick.tick().await;
                    let Some(pool) = weak.upgrade() else { return };
                    pool.check();
                }
            });
        }
        pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Shape, ShapeState>> {
        self.shapes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count pooled processes in `budget` from now on.
    pub fn set_budget(&self, budget: Arc<HostBudget>) {
        *self.budget.lock().unwrap_or_else(|e| e.into_inner()) = Some(budget);
    }

    /// Keep processes of `shape` warm (a function of that shape was registered).
    pub fn want(self: &Arc<Self>, shape: Shape) {
        if self.size == 0 {
            return;
        }
        let order = self.wants.fetch_add(1, Ordering::Relaxed);
        {
            let mut shapes = self.lock();
            shapes.entry(shape).or_default().wanted_at = order;
            while shapes.len() > MAX_SHAPES {
                let oldest = shapes
                    .iter()
                    .min_by_key(|(_, s)| s.wanted_at)
                    .map(|(k, _)| *k);
                if let Some(state) = oldest.and_then(|k| shapes.remove(&k)) {
                    for warm in state.ready {
                        warm.pooled.kill();
                    }
                }
            }
        }
        self.fill(shape);
    }

    /// A warm process of `shape`, if one is ready. Its replacement starts once the
    /// returned [`Assigning`] is dropped: when the instance it becomes has started (or
    /// failed to), so the replacement's own start does not compete with that one.
    pub fn take(self: &Arc<Self>, shape: Shape) -> Option<(Pooled, Assigning)> {
        if self.size == 0 {
            return None;
        }
        let taken = {
            let mut shapes = self.lock();
            let state = shapes.get_mut(&shape)?;
            state.ready.retain(|w| w.pooled.alive());
            let taken = state.ready.pop();
            if taken.is_some() {
                state.assigning += 1;
            }
            taken
        };
        match taken {
            Some(warm) => Some((
                warm.pooled,
                Assigning {
                    pool: self.clone(),
                    shape,
                },
            )),
            None => {
                self.fill(shape);
                None
            }
        }
    }

    /// Every shape's processes, for status.
    pub fn status(&self) -> Vec<WarmShape> {
        let mut out: Vec<WarmShape> = self
            .lock()
            .iter()
            .map(|(shape, state)| WarmShape {
                shape: *shape,
                ready: state
                    .ready
                    .iter()
                    .filter(|w| w.pooled.alive())
                    .map(|w| w.pooled.pid())
                    .collect(),
                starting: state.starting,
                last_error: state.last_error.clone(),
            })
            .collect();
        out.sort_by_key(|s| s.shape);
        out
    }

    /// Stop every pooled process (shutdown).
    pub fn clear(&self) {
        for (_, state) in self.lock().drain() {
            for warm in state.ready {
                warm.pooled.kill();
            }
        }
    }

    /// Drop dead processes and refill; give everything back while the budget is short.
    fn check(self: &Arc<Self>) {
        let budget = self
            .budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let short = budget.as_ref().is_some_and(|b| b.under_pressure());
        let shapes: Vec<Shape> = {
            let mut shapes = self.lock();
            for state in shapes.values_mut() {
                if short {
                    for warm in state.ready.drain(..) {
                        warm.pooled.kill();
                    }
                } else {
                    state.ready.retain(|w| w.pooled.alive());
                }
            }
            shapes.keys().copied().collect()
        };
        if !short {
            for shape in shapes {
                self.fill(shape);
            }
        }
    }

    /// Start what `shape` lacks, within the budget.
    fn fill(self: &Arc<Self>, shape: Shape) {
        let budget = self
            .budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let memory_kib = shape.memory_mb * 1024;
        let mut tickets = Vec::new();
        {
            let mut shapes = self.lock();
            let Some(state) = shapes.get_mut(&shape) else {
                return;
            };
            if state.failed_at.is_some_and(|at| at.elapsed() < RETRY_AFTER) {
                return;
            }
            let lacking = state.lacking(self.size);
            for _ in 0..lacking {
                let ticket = match &budget {
                    None => None,
                    Some(budget) => match budget.try_take_spare(memory_kib) {
                        Some(ticket) => Some(ticket),
                        None => break,
                    },
                };
                state.starting += 1;
                tickets.push(ticket);
            }
        }
        for ticket in tickets {
            let pool = self.clone();
            tokio::spawn(async move { pool.start(shape, ticket).await });
        }
    }

    async fn start(self: Arc<Self>, shape: Shape, ticket: Option<Ticket>) {
        let id = format!("warm-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let started = self.spawn(&id, shape).await;
        let mut shapes = self.lock();
        let Some(state) = shapes.get_mut(&shape) else {
            if let Ok(pooled) = started {
                pooled.kill();
            }
            return;
        };
        state.starting = state.starting.saturating_sub(1);
        match started {
            Ok(pooled) => {
                state.failed_at = None;
                state.last_error = None;
                state.ready.push(Warm {
                    pooled,
                    _ticket: ticket,
                });
            }
            Err(why) => {
                tracing::warn!(
                    runtime = ?shape.runtime,
                    memory_mb = shape.memory_mb,
                    "starting a warm-pool process: {why}; retrying in {RETRY_AFTER:?}"
                );
                state.failed_at = Some(std::time::Instant::now());
                state.last_error = Some(why);
            }
        }
    }

    async fn spawn(self: &Arc<Self>, id: &str, shape: Shape) -> Result<Pooled, String> {
        // Folders, the sandbox plan and the cgroups are file-system work (making a cgroup
        // can take milliseconds): done on the blocking pool, not on the runtime's workers,
        // which meanwhile serve the instance whose start this refill follows.
        let pool = self.clone();
        let owned_id = id.to_owned();
        let prepared = tokio::task::spawn_blocking(move || pool.prepare(&owned_id, shape))
            .await
            .map_err(|e| format!("preparing {id}: {e}"))??;
        let s = &self.spawner;
        let (interpreter, bootstrap) = self.interpreter(shape)?;
        let mut env = s.env.clone();
        env.push(("SHOAL_POOLED".into(), "1".into()));
        if prepared.plan.is_none() {
            env.push((
                "LAMBDA_TASK_ROOT".into(),
                prepared.task_dir.display().to_string(),
            ));
        }
        let spec = RuntimeSpawn {
            interpreter,
            bootstrap,
            plan: prepared.plan,
            cwd: &prepared.task_dir,
            env,
            owner: process::Owner::new("", id),
            scratch: &prepared.scratch,
            cgroup: prepared.cgroup,
        };
        native::spawn_pooled(id, spec, s.start_timeout, s.logs.clone()).await
    }

    /// The interpreter and bootstrap a process of `shape` runs.
    fn interpreter(&self, shape: Shape) -> Result<(Interpreter<'_>, &Path), String> {
        let s = &self.spawner;
        match shape.runtime {
            RuntimeKind::Node => Ok((
                Interpreter {
                    program: &s.node,
                    args: vec![format!("--max-old-space-size={}", shape.memory_mb)],
                    home: None,
                },
                &s.bootstrap,
            )),
            RuntimeKind::Python => {
                let install = s
                    .python
                    .as_ref()
                    .ok_or("python functions cannot run here")?;
                Ok((
                    Interpreter {
                        program: &install.executable,
                        args: crate::python::ARGS
                            .iter()
                            .map(|a| (*a).to_owned())
                            .collect(),
                        home: install.home(),
                    },
                    &s.python_bootstrap,
                ))
            }
            RuntimeKind::Provided => Err("provided runtimes are not pooled".into()),
        }
    }

    /// A process's scratch and empty task directories, its sandbox plan and cgroups.
    fn prepare(&self, id: &str, shape: Shape) -> Result<Prepared, String> {
        let s = &self.spawner;
        let scratch = s.instances_dir.join(id);
        let task_dir = scratch.join("task");
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&task_dir)
            .map_err(|e| format!("creating {}: {e}", task_dir.display()))?;
        set_mode(&task_dir, 0o755).map_err(|e| format!("{}: {e}", task_dir.display()))?;
        let (interpreter, bootstrap) = self.interpreter(shape)?;
        let runtime_dir = bootstrap.parent().unwrap_or(Path::new("/"));
        let extra_ro = interpreter
            .home
            .or_else(|| interpreter.program.parent())
            .filter(|dir| !dir.starts_with("/usr"));
        let plan = s.sandbox.plan(&sandbox::View {
            code_dir: &task_dir,
            runtime_dir: Some(runtime_dir),
            extra_ro,
            tmp_bytes: shape.ephemeral_storage_mb * 1024 * 1024,
        })?;
        let cgroup = match &s.cgroups {
            Some(root) => Some(
                root.instance(id, crate::instance_limits(shape.memory_mb))
                    .map_err(|e| format!("creating the cgroup of {id}: {e}"))?,
            ),
            None => None,
        };
        Ok(Prepared {
            scratch,
            task_dir,
            plan,
            cgroup,
        })
    }
}

/// What [`WarmPool::prepare`] made for one process.
struct Prepared {
    scratch: PathBuf,
    task_dir: PathBuf,
    plan: Option<sandbox::Plan>,
    cgroup: Option<cgroup::InstanceCgroup>,
}

/// A pooled process on its way to becoming an instance. Until this is dropped its shape
/// counts it as present, so neither the take nor the periodic check starts a
/// replacement while the instance starts: on a small machine the replacement's fork,
/// sandbox and interpreter start would take CPU from the start a caller is waiting for
/// (measured: the first response came 20 ms later). Dropped, it starts the replacement.
pub(crate) struct Assigning {
    pool: Arc<WarmPool>,
    shape: Shape,
}

impl Drop for Assigning {
    fn drop(&mut self) {
        {
            let mut shapes = self.pool.lock();
            if let Some(state) = shapes.get_mut(&self.shape) {
                state.assigning = state.assigning.saturating_sub(1);
            }
        }
        // Outside a runtime (the daemon shutting down) there is nothing to refill for.
        if tokio::runtime::Handle::try_current().is_ok() {
            self.pool.fill(self.shape);
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Show the code tree `src` in `dst` (an empty directory): directories made anew,
/// regular files hard-linked (copied where `src` is on another filesystem), symlinks
/// recreated as they are. The unpacked tree is read-only and verified at deploy, so a
/// link shows exactly its content; removing `dst` leaves `src` whole.
pub(crate) fn link_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{symlink, PermissionsExt};
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        if kind.is_dir() {
            std::fs::create_dir(&to)?;
            link_tree(&from, &to)?;
            let mode = entry.metadata()?.permissions().mode() & 0o555;
            set_mode(&to, mode | 0o500)?;
        } else if kind.is_symlink() {
            symlink(std::fs::read_link(&from)?, &to)?;
        } else if kind.is_file() {
            if let Err(e) = std::fs::hard_link(&from, &to) {
                if e.raw_os_error() != Some(libc::EXDEV) {
                    return Err(e);
                }
                std::fs::copy(&from, &to)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linked_tree_shows_the_same_files_links_and_folders() {
        let root = std::env::temp_dir().join(format!("shoal-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (src, dst) = (root.join("src"), root.join("dst"));
        std::fs::create_dir_all(src.join("lib/deep")).unwrap();
        std::fs::write(src.join("index.js"), "module.exports = 1").unwrap();
        std::fs::write(src.join("lib/deep/x.json"), "{}").unwrap();
        std::os::unix::fs::symlink("lib/deep/x.json", src.join("x")).unwrap();
        std::fs::create_dir(&dst).unwrap();
        link_tree(&src, &dst).unwrap();
        assert_eq!(
            std::fs::read_to_string(dst.join("index.js")).unwrap(),
            "module.exports = 1"
        );
        assert_eq!(std::fs::read_to_string(dst.join("x")).unwrap(), "{}");
        assert_eq!(
            std::fs::read_link(dst.join("x")).unwrap(),
            Path::new("lib/deep/x.json")
        );
        // Removing the copy leaves the original whole.
        std::fs::remove_dir_all(&dst).unwrap();
        assert!(src.join("lib/deep/x.json").is_file());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_process_being_assigned_is_replaced_only_once_its_instance_has_started() {
        let mut state = ShapeState::default();
        assert_eq!(state.lacking(2), 2);
        state.starting = 1;
        assert_eq!(state.lacking(2), 1);
        // Taken for a function whose instance is starting: no replacement yet.
        state.starting = 0;
        state.assigning = 2;
        assert_eq!(state.lacking(2), 0);
        // The first instance is up: its process is replaced.
        state.assigning = 1;
        assert_eq!(state.lacking(2), 1);
    }

    #[test]
    fn functions_that_set_interpreter_variables_or_bring_their_own_runtime_start_fresh() {
        let mut code = FunctionCode {
            function: "f".into(),
            version: 1,
            runtime: RuntimeKind::Node,
            handler: "index.handler".into(),
            code_dir: PathBuf::from("/x"),
            memory_mb: 256,
            ephemeral_storage_mb: 512,
            env: Default::default(),
        };
        assert_eq!(
            Shape::of(&code),
            Some(Shape {
                runtime: RuntimeKind::Node,
                memory_mb: 256,
                ephemeral_storage_mb: 512
            })
        );
        code.env.insert("NODE_OPTIONS".into(), "--inspect".into());
        assert_eq!(Shape::of(&code), None);
        code.runtime = RuntimeKind::Python;
        assert!(Shape::of(&code).is_some(), "NODE_* means nothing to Python");
        code.env.insert("PYTHONPATH".into(), "/x".into());
        assert_eq!(Shape::of(&code), None);
        code.env.clear();
        code.runtime = RuntimeKind::Provided;
        assert_eq!(Shape::of(&code), None);
    }
}
