package relay

// SetMaxHeld sets how many refused outcomes d holds; call it before Run.
func SetMaxHeld(d *Deliverer, n int) { d.rec.maxHeld = n }

// HeldOutcomes is how many refused outcomes d holds now.
func HeldOutcomes(d *Deliverer) int { return int(d.rec.heldN.Load()) }
