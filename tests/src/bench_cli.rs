//! The command lines of the benchmark binaries: `--help` (or `-h`) prints the usage and exits
//! 0; a bad argument names itself and shows the usage (exit 2), never a panic.

use std::str::FromStr;

/// A benchmark's name and usage text.
#[derive(Debug, Clone, Copy)]
pub struct BenchCli {
    /// The program name, for error lines.
    pub name: &'static str,
    /// The usage (a few lines: synopsis, what it does, how to build it).
    pub usage: &'static str,
}

impl BenchCli {
    /// The arguments after the program name. `--help` or `-h` anywhere prints the usage and
    /// exits 0.
    #[must_use]
    pub fn args(&self) -> Vec<String> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.iter().any(|a| a == "--help" || a == "-h") {
            println!("{}", self.usage);
            std::process::exit(0);
        }
        args
    }

    /// Says what is wrong, shows the usage, exits 2.
    pub fn fail(&self, why: &str) -> ! {
        eprintln!("{}: {why}\n\n{}", self.name, self.usage);
        std::process::exit(2);
    }

    /// `arg` parsed as a `what` (`default` when absent), or [`BenchCli::fail`].
    pub fn number<T: FromStr>(&self, arg: Option<&str>, what: &str, default: T) -> T {
        match arg {
            None => default,
            Some(a) => a
                .parse()
                .unwrap_or_else(|_| self.fail(&format!("{what} must be a number, not {a:?}"))),
        }
    }

    /// Exits with a message unless this process runs as root (the lab benches).
    pub fn require_root(&self) {
        if !netns_sim::sys::is_root() {
            eprintln!("{}: needs root (network namespaces)", self.name);
            std::process::exit(1);
        }
    }
}
