//! The label-set id of a request's (method, route): two caches per thread in front of the
//! interning table, so that a request pays neither its lock nor its allocations.
//!
//! - The recent cache: a few slots keyed by the address of axum's [`MatchedPath`] string.
//!   axum hands every request of a route a clone of one `Arc<str>`, so a hit is a pointer
//!   compare; a slot holds a clone of the `MatchedPath` it was filled from, which keeps
//!   that string alive, so an address it names cannot be reused by another route's string
//!   while the slot names it.
//! - Behind it, a map from (method, route template) to id, bounded by
//!   [`ROUTE_CACHE_MAX`], for the routes whose strings change address (nested routers build
//!   theirs per request) and for requests no route matched.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use axum::extract::MatchedPath;
use http::Method;

use super::{LabelSet, intern};

/// The route of a request axum did not match to a route template.
pub const UNMATCHED: &str = "unmatched";
/// The method of a request whose method is not one of HTTP's standard nine.
pub const OTHER_METHOD: &str = "_OTHER";

/// The distinct (method, route) pairs each thread remembers the label-set id of. Past it,
/// a request of a pair the thread has not seen interns its set (a lock, a hash and two
/// allocations, about 0.25 µs; the table's own bound still applies). axum's routes are
/// the application's, so an app stays far below it; the bound is there for one that
/// builds routers on the fly.
pub const ROUTE_CACHE_MAX: usize = 1024;

/// The methods [`method_value`] tells apart, `_OTHER` last.
const METHODS: usize = 10;

/// Slots of the recent cache (a power of two).
const RECENT: usize = 32;

/// The method's index (0..[`METHODS`]) and label value.
fn method_value(m: &Method) -> (usize, &'static str) {
    match *m {
        Method::GET => (0, "GET"),
        Method::HEAD => (1, "HEAD"),
        Method::POST => (2, "POST"),
        Method::PUT => (3, "PUT"),
        Method::DELETE => (4, "DELETE"),
        Method::CONNECT => (5, "CONNECT"),
        Method::OPTIONS => (6, "OPTIONS"),
        Method::TRACE => (7, "TRACE"),
        Method::PATCH => (8, "PATCH"),
        _ => (METHODS - 1, OTHER_METHOD),
    }
}

/// A multiply-rotate hash for the route templates of the cache: they are short and come
/// from the application's router, not from clients, so no keyed hash is needed against
/// flooding, and SipHash would cost more than the rest of the lookup.
#[derive(Default, Clone, Copy)]
struct RouteHasher(u64);

impl Hasher for RouteHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        // The table picks buckets by the low bits, which a product mixes least.
        self.0 ^ (self.0 >> 32)
    }
}

type RouteMap = HashMap<Box<str>, u32, BuildHasherDefault<RouteHasher>>;

/// This thread's label-set ids of the (method, route) pairs it has served.
struct RouteIds {
    by_method: [RouteMap; METHODS],
    len: usize,
}

/// One slot of the recent cache: the route string it was filled from, kept alive.
struct Recent {
    path: Option<MatchedPath>,
    method: usize,
    id: u32,
}

thread_local! {
    static ROUTE_IDS: RefCell<RouteIds> = const {
        RefCell::new(RouteIds {
            by_method: [const { HashMap::with_hasher(BuildHasherDefault::new()) }; METHODS],
            len: 0,
        })
    };
    static RECENT_IDS: RefCell<[Recent; RECENT]> = const {
        RefCell::new([const { Recent { path: None, method: 0, id: 0 } }; RECENT])
    };
}

/// The label-set id `RouteLabels` gives a request of `method` on `route` (benchmarks).
#[doc(hidden)]
pub fn route_id_for_bench(method: &Method, route: &str) -> u32 {
    route_id(method, route)
}

fn intern_route(method: &'static str, route: &str) -> u32 {
    intern(LabelSet::new([
        ("http.method", method),
        ("http.route", route),
    ]))
}

/// The label-set id of `method` and `route`: a lookup in this thread's map, the set
/// interned only the first time the thread sees the pair (or past [`ROUTE_CACHE_MAX`], or
/// while the thread's locals are being torn down).
fn route_id(method: &Method, route: &str) -> u32 {
    let (index, value) = method_value(method);
    let cached = ROUTE_IDS.try_with(|ids| {
        let mut ids = ids.try_borrow_mut().ok()?;
        if let Some(id) = ids.by_method[index].get(route) {
            return Some(*id);
        }
        let id = intern_route(value, route);
        if ids.len < ROUTE_CACHE_MAX {
            ids.by_method[index].insert(route.into(), id);
            ids.len += 1;
        }
        Some(id)
    });
    match cached {
        Ok(Some(id)) => id,
        _ => intern_route(value, route),
    }
}

/// The label-set id of a request of `method` whose matched route is `path` ([`UNMATCHED`]
/// where there is none): the recent cache's slot for the route string's address, else
/// [`route_id`], which then fills the slot.
pub(super) fn request_id(method: &Method, path: Option<&MatchedPath>) -> u32 {
    let Some(path) = path else {
        return route_id(method, UNMATCHED);
    };
    let route = path.as_str();
    let index = method_value(method).0;
    let addr = route.as_ptr() as usize;
    let slot = ((addr >> 4) ^ (addr >> 10) ^ index) & (RECENT - 1);
    let hit = RECENT_IDS.try_with(|recent| {
        let mut recent = recent.try_borrow_mut().ok()?;
        let r = &mut recent[slot];
        let same = r.path.as_ref().is_some_and(|p| {
            // The slot's clone keeps its string alive: equal address and length are the
            // same string.
            p.as_str().as_ptr() == route.as_ptr() && p.as_str().len() == route.len()
        });
        if same && r.method == index {
            return Some(r.id);
        }
        let id = route_id(method, route);
        *r = Recent {
            path: Some(path.clone()),
            method: index,
            id,
        };
        Some(id)
    });
    match hit {
        Ok(Some(id)) => id,
        _ => route_id(method, route),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_fold() {
        assert_eq!(method_value(&Method::GET).1, "GET");
        let odd = Method::from_bytes(b"PURGE").map(|m| method_value(&m));
        assert_eq!(odd.ok(), Some((METHODS - 1, OTHER_METHOD)));
    }

    fn cached_len() -> usize {
        ROUTE_IDS.with(|ids| ids.borrow().len)
    }

    #[test]
    fn the_cache_gives_the_interned_id_and_is_bounded() {
        // Each test runs on a thread of its own: this thread's cache starts empty.
        let id = route_id(&Method::GET, "/users/{id}");
        assert_eq!(
            id,
            intern(LabelSet::new([
                ("http.route", "/users/{id}"),
                ("http.method", "GET")
            ]))
        );
        assert_eq!(route_id(&Method::GET, "/users/{id}"), id);
        assert_eq!(cached_len(), 1);
        // The same route under another method is another set.
        let post = route_id(&Method::POST, "/users/{id}");
        assert_ne!(post, id);
        assert_eq!(cached_len(), 2);
        // Past the bound, the cache stops growing and ids are still right.
        for i in 0..ROUTE_CACHE_MAX + 5 {
            route_id(&Method::PUT, &format!("/r{i}"));
        }
        assert_eq!(cached_len(), ROUTE_CACHE_MAX);
        let late = route_id(&Method::PUT, &format!("/r{}", ROUTE_CACHE_MAX + 3));
        assert_eq!(
            late,
            intern_route("PUT", &format!("/r{}", ROUTE_CACHE_MAX + 3))
        );
        assert_eq!(route_id(&Method::GET, "/users/{id}"), id);
    }
}
