package etcdstate

// WithProbed returns o with fn called after each probe of the revocations,
// with whether it confirmed them current.
func WithProbed(o Options, fn func(confirmed bool)) Options {
	o.probed = fn
	return o
}

// WithBeforeSwap returns o with fn called before each compare-and-swap
// transaction, as if another writer could act just then.
func WithBeforeSwap(o Options, fn func()) Options {
	o.beforeSwap = fn
	return o
}

// WithMaxAttempts returns o with an operation giving up after n lost
// compare-and-swap rounds.
func WithMaxAttempts(o Options, n int) Options {
	o.maxAttempts = n
	return o
}
