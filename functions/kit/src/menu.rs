//! The original demo's menu: the default choices of each topping stage. Kept here, outside the
//! stages' WebAssembly bindings, so the benchmarks can run the same stage logic natively.

/// `sauce`: the original service draws uniformly from this list (repeats weigh a choice more);
/// the article also names `bbq` and shows it in its sample output, so it is included once.
pub const SAUCES: [&str; 10] = [
    "regular", "light", "extra", "none", "alfredo", "regular", "light", "extra", "alfredo", "bbq",
];

/// `cheese`: the original service's list; repeats weigh a choice more.
pub const CHEESES: [&str; 7] = [
    "extra",
    "none",
    "three cheese",
    "goat cheese",
    "extra",
    "three cheese",
    "goat cheese",
];

/// `meats`: the original service's meats; up to four distinct ones are joined with `" & "`.
pub const MEATS: [&str; 6] = [
    "pepperoni",
    "sausage",
    "ham",
    "anchovies",
    "salami",
    "bacon",
];

/// `veggies`: the original service's veggies; up to four distinct ones are joined with `" & "`.
pub const VEGGIES: [&str; 6] = [
    "tomato",
    "olives",
    "onions",
    "peppers",
    "pineapple",
    "mushrooms",
];
