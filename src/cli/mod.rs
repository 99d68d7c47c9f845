//! The `vmshare` command line for ops and guests.
//!
//! One file per subcommand (or family). To add one: a variant of [`Command`]
//! with its arguments (its doc comment is the help and man page text), a
//! module with a `run` returning an [`ExitCode`], and one arm in [`main`].
//!
//! Exit codes: 0 done (or already so), 1 refused or a problem found, 2 bad
//! usage or configuration.

mod check;
mod docs;
mod doctor;
mod doctor_admin;
mod doctor_sshd;
mod guest;
mod output;
mod owner_keys;
mod session_list;
mod sessions;
mod share;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::store::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "vmshare",
    version,
    about = "Share this VM's accounts with guests over SSH",
    long_about = "Share this VM's accounts with guests over SSH.\n\n\
        Guests of an owner log in as the owner's account with their own SSH keys. \
        Only accepted guests of an owner whose sharing is on get in; revoking, \
        turning sharing off or leaving ends access and live sessions at once.\n\n\
        Edits of the grant file are validated, atomic and keep its comments.",
    after_long_help = "Files:\n  \
        /etc/vmshare/vmshare.toml  agent configuration (--config)\n  \
        /etc/vmshare/grants.toml   the grant file: who may log in as whom\n  \
        /run/vmshare/              snapshot, session records, control socket\n  \
        /var/lib/vmshare/owner-keys/  sharing owners' own keys, held by root\n\n\
        Exit status: 0 done (or already so), 1 refused or a problem found, \
        2 bad usage or configuration."
)]
pub struct Cli {
    /// Agent configuration file [default: /etc/vmshare/vmshare.toml].
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a grant file and print every error (exit 1 if invalid).
    Check {
        /// Grant file to check; default: the configured one.
        path: Option<PathBuf>,
    },
    /// Show owners, guests, keys, live sessions and the grant file's health.
    Status {
        /// Print JSON (format 2) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List live guest sessions.
    Sessions {
        /// Print JSON (format 1) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Turn an owner's "Share VM" switch on or off (off revokes every guest
    /// of the owner at once).
    Sharing {
        /// The owner: a local, non-root account.
        owner: String,
        #[arg(value_enum)]
        state: OnOff,
    },
    /// Invite a guest with their SSH keys, or add keys to a guest.
    ///
    /// A new guest starts as `invited` (no access until accepted). Inviting
    /// a guest who is already there adds the keys they do not have yet; a
    /// guest who rejected or left becomes `invited` again. Keys added to an
    /// accepted guest work at once.
    Invite {
        #[command(flatten)]
        who: OwnerGuest,
        /// An OpenSSH public key line (`type base64 [comment]`); repeatable.
        #[arg(
            long = "key",
            value_name = "KEY",
            required_unless_present = "key_files"
        )]
        keys: Vec<String>,
        /// A file of public keys, one a line (`#` comments and blank lines
        /// are skipped; `-` is standard input); repeatable.
        #[arg(long = "key-file", value_name = "FILE")]
        key_files: Vec<PathBuf>,
        /// Let the guest become root through the owner's rights (sudo, su,
        /// pkexec): `admin = true`. Without it a new guest may not.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// The guest accepts an invitation: access starts while sharing is on.
    Accept {
        #[command(flatten)]
        who: OwnerGuest,
        /// Also let the guest become root through the owner's rights:
        /// `admin = true`.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Set when a guest's access ends (sooner or later than now set).
    Extend {
        #[command(flatten)]
        who: OwnerGuest,
        /// When access ends: a duration from now (`90s`, `30m`, `2h`, `1d`,
        /// `2w`) or a date-time with a UTC offset (`2026-12-01T18:00:00Z`).
        #[arg(long, value_name = "WHEN", required = true)]
        expires: String,
    },
    /// The guest rejects an invitation.
    Reject {
        #[command(flatten)]
        who: OwnerGuest,
    },
    /// Stop sharing with a guest: their entry goes, access and live sessions
    /// end.
    Revoke {
        #[command(flatten)]
        who: OwnerGuest,
    },
    /// Leave a shared VM: status `left`, access and live sessions end.
    ///
    /// Without arguments, run by a guest inside their SSH session: the daemon
    /// tells which guest the caller is from the session it belongs to, and
    /// refuses in an owner's own session. It shows a one-time code on the
    /// terminal of the guest's SSH login; typing it back at the prompt is
    /// leaving (a login without a terminal cannot leave). With OWNER GUEST,
    /// ops record that a guest left.
    Leave {
        /// The owner (ops form; give both or neither).
        #[arg(requires = "guest")]
        owner: Option<String>,
        /// The guest (ops form).
        #[arg(requires = "owner")]
        guest: Option<String>,
    },
    /// Inside a guest session: which guest you are, in whose account.
    Whoami {
        /// Print JSON (the control socket's answer) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A sharing owner's own keys, held by root: while an owner shares,
    /// sshd reads no key file in her home (a guest runs as the owner and
    /// could write them) and the key lookup serves these instead.
    #[command(subcommand, name = "owner-keys")]
    OwnerKeys(OwnerKeysCommand),
    /// Check that sshd, PAM, the grant file, the daemon and cgroups are set
    /// up for vmshare (exit 1 if something would break enforcement).
    Doctor(doctor::DoctorArgs),
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write all pages to a directory.
    Man {
        /// Print this subcommand's page (e.g. `invite`) instead of the main
        /// one.
        subcommand: Option<String>,
        /// Write `vmshare.1` and one `vmshare-SUBCOMMAND.1` per subcommand
        /// into this directory.
        #[arg(long, value_name = "DIR", conflicts_with = "subcommand")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum OwnerKeysCommand {
    /// Show the owner's held key lines with their fingerprints.
    List {
        owner: String,
        /// Print JSON (format 1) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Add authorized_keys lines (options kept as written) to the owner's
    /// held keys. Refused for a key granted to a guest of hers.
    Add {
        owner: String,
        /// One authorized_keys line; repeatable.
        #[arg(long = "line", value_name = "LINE", required = true)]
        lines: Vec<String>,
    },
    /// Remove the held lines of a key, by fingerprint (`SHA256:…`).
    Remove { owner: String, fingerprint: String },
    /// Take the owner's keys over from her home files (the first time), or
    /// list the lines that appeared there since and, with --yes, add them.
    Import {
        /// The owner; or --all for every owner in the grant file.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        owner: Option<String>,
        #[arg(long)]
        all: bool,
        /// Add the lines that appeared since the takeover.
        #[arg(long)]
        yes: bool,
    },
    /// For an owner no longer in the grant file: let sshd read her home
    /// key files again. Lines that appeared there since the takeover are
    /// listed; without --yes she stays held and they do not log in.
    Release {
        owner: String,
        #[arg(long)]
        yes: bool,
    },
}

/// An owner and one of their guests.
#[derive(Debug, Clone, Args)]
pub struct OwnerGuest {
    /// The owner: the local account guests log in as.
    pub owner: String,
    /// The guest's platform username.
    pub guest: String,
}

/// A guest's limits, set with an invitation or acceptance; what is not
/// given stays as it is.
#[derive(Debug, Clone, Default, Args)]
pub struct LimitArgs {
    /// When access ends: a duration from now (`90s`, `30m`, `2h`, `1d`,
    /// `2w`) or a date-time with a UTC offset (`2026-12-01T18:00:00Z`).
    /// At that moment live sessions end and new logins are refused.
    #[arg(long, value_name = "WHEN")]
    pub expires: Option<String>,
    /// Allow logins only from this client address or network (IPv4 or
    /// IPv6, e.g. `203.0.113.0/24`); repeatable. Replaces the guest's list.
    #[arg(long = "from", value_name = "CIDR")]
    pub from: Vec<String>,
    /// No port, agent or X11 forwarding and no `~/.ssh/rc` for the guest's
    /// keys; a terminal still works.
    #[arg(long)]
    pub no_forwarding: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// Runs the CLI; the single place where errors become an exit code.
pub fn main() -> ExitCode {
    // The helper that reads an owner's home key files as the owner, for a
    // takeover or an import.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == crate::sys::as_user::READ_FLAG)
    {
        return crate::sys::as_user::serve(&args);
    }
    let cli = Cli::parse();
    // Printing docs needs no configuration.
    match &cli.command {
        Command::Completions { shell } => return docs::completions(*shell),
        Command::Man {
            subcommand,
            out_dir,
        } => return docs::man(subcommand.as_deref(), out_dir.as_deref()),
        _ => {}
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vmshare: bad configuration:\n{e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Check { path } => check::run(&config, path.as_deref()),
        Command::Status { json } => status::run(&config, json),
        Command::Sessions { json } => sessions::run(&config, json),
        Command::Sharing { owner, state } => share::sharing(&config, owner, state == OnOff::On),
        Command::Invite {
            who,
            keys,
            key_files,
            admin,
            limits,
        } => share::invite(&config, who, keys, &key_files, &limits, admin),
        Command::Accept { who, admin, limits } => share::accept(&config, who, &limits, admin),
        Command::Extend { who, expires } => share::extend(&config, who, &expires),
        Command::Reject { who } => share::reject(&config, who),
        Command::Revoke { who } => share::revoke(&config, who),
        Command::Leave {
            owner: Some(owner),
            guest: Some(guest),
        } => share::leave(&config, OwnerGuest { owner, guest }),
        Command::Leave { .. } => guest::leave(&config),
        Command::Whoami { json } => guest::whoami(&config, json),
        Command::OwnerKeys(c) => match c {
            OwnerKeysCommand::List { owner, json } => owner_keys::list(&config, &owner, json),
            OwnerKeysCommand::Add { owner, lines } => owner_keys::add(&config, &owner, &lines),
            OwnerKeysCommand::Remove { owner, fingerprint } => {
                owner_keys::remove(&config, &owner, &fingerprint)
            }
            OwnerKeysCommand::Import { owner, all, yes } => {
                owner_keys::import(&config, owner.as_deref(), all, yes)
            }
            OwnerKeysCommand::Release { owner, yes } => owner_keys::release(&config, &owner, yes),
        },
        Command::Doctor(args) => doctor::run(&config, &args),
        Command::Completions { .. } | Command::Man { .. } => ExitCode::SUCCESS,
    }
}

/// The command line definition, for man pages and completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
