package boltstate

// CountVisits makes s count into n each cluster index key ListClusters
// reads.
func CountVisits(s *Store, n *int) { s.onVisit = func() { *n++ } }
