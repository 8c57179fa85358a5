//! Transfer engines as the tests configure them.

use dataref::transfer::Engine;

/// The defaults dataref runs with (retry policy, stall timeout, part sizes) in a memory budget
/// of 128 MiB, without the free-space floor (test disks are small).
pub fn defaults() -> Engine {
    let mut engine = Engine::new(&dataref::store::Resources::new(128 * 1024 * 1024));
    engine.reserved_free_disk_bytes = 0;
    engine
}

/// Small parts (64 KiB, 4 at once) so that multi-part code paths run on small data.
pub fn small_parts() -> Engine {
    let mut engine = Engine::new(&dataref::store::Resources::new(64 * 1024 * 1024));
    engine.part_size = 64 * 1024;
    engine.part_concurrency = 4;
    engine.reserved_free_disk_bytes = 0;
    engine
}
