//! Processes, as the host's `/proc` shows them (through dataref's own reader).

use dataref::model::process::ProcStat;

/// Every process whose parent is `parent`, by pid.
pub fn children_of(parent: i32) -> Vec<ProcStat> {
    let mut out: Vec<ProcStat> = ProcStat::all()
        .into_iter()
        .filter(|p| p.ppid == parent)
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// The state letter of a process (`None` once it is gone).
pub fn process_state(pid: i32) -> Option<char> {
    ProcStat::read(pid).map(|p| p.state)
}

/// Whether a process is alive (a zombie counts as dead).
pub fn alive(pid: i32) -> bool {
    ProcStat::read(pid).is_some_and(|p| !p.has_exited())
}
