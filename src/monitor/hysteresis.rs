//! Rise/fall counting: a backend changes sides only after enough consecutive checks agree.

/// `fall` consecutive bad checks take a backend out; `rise` consecutive good ones bring it back.
#[derive(Debug, Clone)]
pub struct Hysteresis {
    rise: u32,
    fall: u32,
    good_streak: u32,
    bad_streak: u32,
    up: bool,
}

impl Hysteresis {
    /// Starts `up`: a proxy that just started serves with what it was given until checks say no.
    pub fn new(rise: u32, fall: u32) -> Self {
        Hysteresis { rise: rise.max(1), fall: fall.max(1), good_streak: 0, bad_streak: 0, up: true }
    }

    /// Starts `down`: for a server already known to be down when its checks restart.
    pub fn new_down(rise: u32, fall: u32) -> Self {
        Hysteresis { up: false, ..Hysteresis::new(rise, fall) }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Up, but the last check failed: the backend may be on its way out.
    pub fn is_failing(&self) -> bool {
        self.up && self.bad_streak > 0
    }

    /// Records one check; returns the new side when it changed.
    pub fn observe(&mut self, good: bool) -> Option<bool> {
        if good {
            self.good_streak += 1;
            self.bad_streak = 0;
        } else {
            self.bad_streak += 1;
            self.good_streak = 0;
        }
        let flip = if self.up { self.bad_streak >= self.fall } else { self.good_streak >= self.rise };
        if flip {
            self.up = !self.up;
            Some(self.up)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_checks_and_rises_after_rise_checks() {
        let mut h = Hysteresis::new(2, 3);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), Some(false));
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(true), Some(true));
    }

    #[test]
    fn a_value_hovering_at_the_threshold_does_not_flap() {
        let mut h = Hysteresis::new(2, 3);
        // good, bad, good, bad, … never three bad or (once out) two good in a row.
        let pattern = [true, false, false, true, false, true, false, false, true, false];
        let flips = pattern.iter().cycle().take(200).filter_map(|g| h.observe(*g)).count();
        assert_eq!(flips, 0);
    }
}
