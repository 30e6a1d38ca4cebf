//! `cargo xtask base update`: pins the registry base images of the image definitions.

use xshell::Shell;

use crate::{
    flags,
    image::{
        base,
        definitions::{self, Base},
    },
};

impl flags::Base {
    pub(crate) fn run(self, sh: &Shell) -> anyhow::Result<()> {
        match self.command {
            flags::BaseCommand::Update(update) => {
                let mut references: Vec<String> = definitions::IMAGES
                    .iter()
                    .filter_map(|def| match def.base {
                        Base::Registry(reference) => Some(reference.to_owned()),
                        Base::Scratch => None,
                    })
                    .chain(update.references)
                    .collect();
                references.sort();
                references.dedup();
                if references.is_empty() {
                    eprintln!("no image uses a registry base: nothing to pin");
                    return Ok(());
                }
                let lock = base::default_lock_path();
                for (reference, digest) in base::update(sh, &references, &lock)? {
                    eprintln!("{reference} ({}) -> {digest}", base::PLATFORM);
                }
                eprintln!("wrote {}", lock.display());
                Ok(())
            }
        }
    }
}
