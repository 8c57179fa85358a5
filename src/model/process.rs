//! The process table as `/proc/<pid>/stat` shows it (proc(5)): the one reader the supervisor,
//! the daemon's records, mount cleanup and the tests share.

use std::collections::HashMap;

/// The fields of one `/proc/<pid>/stat` line dataref uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    /// The command name (`comm`), which may hold spaces and parentheses.
    pub comm: String,
    /// The state letter: `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    pub ppid: i32,
    /// Field 22: when the process started, in clock ticks after boot; with the pid it names one
    /// process even after its pid is reused.
    pub start_time: u64,
}

impl ProcStat {
    /// Parses a stat line: `pid (comm) state ppid ...`. The name runs to the *last* `)`, since
    /// a program may put `)` in its own name.
    pub fn parse(text: &str) -> Option<Self> {
        let (head, rest) = text.rsplit_once(')')?;
        let (pid, comm) = head.split_once(" (")?;
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        // Fields after the name start at field 3 (state); start time is field 22.
        let start_time = fields.nth(17)?.parse().ok()?;
        Some(Self {
            pid: pid.trim().parse().ok()?,
            comm: comm.to_string(),
            state,
            ppid,
            start_time,
        })
    }

    /// The process `pid`, or `None` once it is gone (or hidden from us).
    pub fn read(pid: i32) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Every process this process can see.
    pub fn all() -> Vec<Self> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(Self::read)
            .collect()
    }

    /// Exited but not reaped (`Z`), or on its way out (`X`).
    pub fn has_exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Live (not exited) descendants of `root`, parents before their children.
pub fn descendants_of(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for process in ProcStat::all() {
        if !process.has_exited() {
            children.entry(process.ppid).or_default().push(process.pid);
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        for &kid in children.get(&pid).into_iter().flatten() {
            out.push(kid);
            stack.push(kid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_with_spaces_and_parentheses_is_read_to_the_last_parenthesis() {
        let line = "4242 (my (odd) prog) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let stat = ProcStat::parse(line).unwrap();
        assert_eq!(stat.pid, 4242);
        assert_eq!(stat.comm, "my (odd) prog");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 17);
        assert_eq!(stat.start_time, 987654);
        assert!(!stat.has_exited());
    }

    #[test]
    fn a_truncated_line_is_no_process() {
        assert_eq!(ProcStat::parse("12 (x) Z 1 2 3"), None);
        assert_eq!(ProcStat::parse("garbage"), None);
    }

    #[test]
    fn this_process_is_read_and_its_parent_sees_it_as_a_descendant() {
        let me = std::process::id() as i32;
        let stat = ProcStat::read(me).unwrap();
        assert_eq!(stat.pid, me);
        assert_eq!(stat.ppid, std::os::unix::process::parent_id() as i32);
        assert!(descendants_of(stat.ppid).contains(&me));
        assert!(ProcStat::all().iter().any(|p| p.pid == me));
    }
}
