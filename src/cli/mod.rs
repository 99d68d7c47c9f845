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
mod guest;
mod keys;
mod output;
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
        /var/lib/vmshare/ledger    the key ledger: every key a guest was granted or used\n\n\
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
    /// The key ledger: every key ever granted to a guest or used by a guest
    /// session. Such a key logs in as that guest wherever sshd finds it
    /// (also in the owner's own authorized_keys), and is refused once the
    /// guest's access is gone.
    #[command(subcommand)]
    Keys(KeysCommand),
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
pub enum KeysCommand {
    /// List the keys in the ledger: owner, fingerprint, guest, and how the
    /// key became the guest's (granted, authenticated, planted).
    List {
        /// Only this owner's keys.
        owner: Option<String>,
        /// Print JSON (format 1) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Give a key back to its owner (root only, audited): it is no guest's
    /// from then on, so the owner's own key files let it in as the owner.
    Release {
        /// The owner whose key it is.
        owner: String,
        /// The key's fingerprint, `SHA256:…` (as `vmshare keys list` shows).
        fingerprint: String,
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
        Command::Keys(KeysCommand::List { owner, json }) => {
            keys::list(&config, owner.as_deref(), json)
        }
        Command::Keys(KeysCommand::Release { owner, fingerprint }) => {
            keys::release(&config, &owner, &fingerprint)
        }
        Command::Doctor(args) => doctor::run(&config, &args),
        Command::Completions { .. } | Command::Man { .. } => ExitCode::SUCCESS,
    }
}

/// The command line definition, for man pages and completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}
