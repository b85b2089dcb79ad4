package etcdstate

// WithProbed returns o with fn called after each probe of the revocations,
// with whether it confirmed them current.
func WithProbed(o Options, fn func(confirmed bool)) Options {
	o.probed = fn
	return o
}
