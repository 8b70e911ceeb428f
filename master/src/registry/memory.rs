//! [`InMemoryRegistry`]: Mesos's `--registry=in_memory`. It keeps the contract of
//! [`super::Registry`] within one process (atomic batches, reads see every returned `apply`), and
//! nothing survives a restart. For tests and throwaway masters.

use std::sync::{Mutex, PoisonError};

use super::{Mutation, Registry, RegistryError, RegistrySnapshot};

/// A registry held in memory only.
#[derive(Debug, Default)]
pub struct InMemoryRegistry {
    state: Mutex<RegistrySnapshot>,
}

impl InMemoryRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Registry for InMemoryRegistry {
    fn apply(&self, batch: Vec<Mutation>) -> Result<(), RegistryError> {
        for mutation in &batch {
            mutation.validate().map_err(RegistryError::Invalid)?;
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for mutation in batch {
            mutation.apply_to(&mut state);
        }
        Ok(())
    }

    fn load(&self) -> Result<RegistrySnapshot, RegistryError> {
        Ok(self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone())
    }
}
