//! The flags of `murmur agent`, made from the settings table, and their reading into a
//! [`Layer`]. The flag names are a public contract (see README); each mirrors a
//! `MURMUR_*` variable and a TOML key.

use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Command};

use super::error::ConfigError;
use super::kinds::Shape;
use super::settings::{Layer, SETTINGS};

/// Flags of `murmur agent`. Every flag overrides its `MURMUR_*` variable, which
/// overrides the config file.
#[derive(Debug, Default, Clone)]
pub struct AgentArgs {
    /// The TOML config file (`--config`), read first.
    pub config: Option<PathBuf>,
    /// Each flag given (by its name, `--seed`) with its values in order.
    given: Vec<(&'static str, Vec<String>)>,
}

impl AgentArgs {
    /// Parses `murmur agent`'s arguments (without the program and subcommand names), as
    /// an embedding program or a test would give them.
    pub fn parse<I, T>(args: I) -> Result<AgentArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cmd = <AgentArgs as clap::Args>::augment_args(Command::new("agent").no_binary_name(true));
        let matches = cmd.try_get_matches_from(args)?;
        <AgentArgs as clap::FromArgMatches>::from_arg_matches(&matches)
    }

    /// Reads the flags that were given into a layer.
    pub fn to_layer(&self) -> Result<Layer, ConfigError> {
        Layer::from_flags(&self.given)
    }
}

impl clap::FromArgMatches for AgentArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = AgentArgs::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        if let Some(path) = matches.get_one::<PathBuf>("config") {
            self.config = Some(path.clone());
        }
        for s in SETTINGS {
            let values = match s.shape {
                Shape::Switch => matches.get_flag(s.id).then(Vec::new),
                Shape::One | Shape::Many => matches.get_many::<String>(s.id).map(|v| v.cloned().collect()),
            };
            if let Some(values) = values {
                self.given.retain(|(flag, _)| *flag != s.flag);
                self.given.push((s.flag, values));
            }
        }
        Ok(())
    }
}

impl clap::Args for AgentArgs {
    fn augment_args(cmd: Command) -> Command {
        let config = Arg::new("config")
            .long("config")
            .value_name("PATH")
            .value_parser(clap::value_parser!(PathBuf))
            .help("TOML config file (lowest precedence: env and flags override it)");
        SETTINGS.iter().fold(cmd.arg(config), |cmd, s| {
            let arg = Arg::new(s.id).long(&s.flag[2..]).help(s.help_text());
            let arg = match s.shape {
                Shape::Switch => arg.action(ArgAction::SetTrue),
                Shape::One => arg.value_name(s.value_name).action(ArgAction::Set),
                Shape::Many => arg.value_name(s.value_name).action(ArgAction::Append),
            };
            cmd.arg(arg)
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_come_from_the_table() {
        let args = AgentArgs::parse(["--name", "n", "--seed", "a:1", "--seed", "b:2", "--insecure", "--drain", "1s"])
            .expect("valid flags");
        let layer = args.to_layer().expect("valid values");
        assert_eq!(layer.name.as_deref(), Some("n"));
        assert_eq!(layer.seeds.as_deref(), Some(&["a:1".to_owned(), "b:2".to_owned()][..]));
        assert_eq!((layer.insecure, layer.drain), (Some(true), Some(std::time::Duration::from_secs(1))));
        assert!(layer.zone.is_none() && layer.log_json.is_none());
        let err = AgentArgs::parse(["--drain", "soon"]).expect("clap takes any text").to_layer().expect_err("bad");
        assert_eq!(err.field, "--drain");
        assert!(AgentArgs::parse(["--no-such-flag"]).is_err());
    }
}
