// The client side of the placement driver protocol (`PDClient`, `PDError`, the record types) lives below this module,
// so that the SDK reaches the placement driver without linking its state machine, Raft or TOMLKit; code that uses
// the placement driver itself sees those types through this module too.
@_exported import PlacementDriverClient
