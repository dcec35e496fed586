//! The SQLite store's read cache: the comments of recently read items, in memory, so a list needs
//! no database round trip. It stays exact because in SQLite mode one process owns the database
//! and every write goes through its writer task, which updates the cache after each commit and
//! before answering the writes (a client always reads its own writes).
//!
//! The one race: a reader fills the cache from a query that ran before a commit, while the writer
//! updates the cache after it. Each write to an item that is not cached bumps a generation, and a
//! fill only lands if the generation did not move since the reader looked; appends skip comments
//! a fill already holds (ids grow with every commit, so "already held" is `id <= last id`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::ItemComments;
use crate::domain::{Comment, ContentId};

/// Items with more comments than this are not cached (their pages are read from the database).
pub const MAX_COMMENTS_PER_ITEM: usize = 1000;

/// Roughly how much text the cache may hold before it starts over (RSS stays small).
const BUDGET_BYTES: usize = 8 * 1024 * 1024;

#[derive(Default)]
pub struct ListCache {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    items: HashMap<ContentId, Arc<ItemComments>>,
    generation: u64,
    bytes: usize,
}

fn size_of(comments: &[Comment]) -> usize {
    comments
        .iter()
        .map(|c| c.email.len() + c.comment.len() + c.content_id.as_str().len() + 64)
        .sum()
}

impl State {
    /// Forgets an item; a fill racing with this must not bring the old list back.
    fn forget(&mut self, item: &ContentId) {
        if let Some(gone) = self.items.remove(item) {
            self.bytes -= size_of(&gone);
        }
        self.generation += 1;
    }

    fn start_over(&mut self) {
        self.items.clear();
        self.bytes = 0;
        self.generation += 1;
    }
}

impl ListCache {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every comment on `item`, oldest first, if cached.
    pub fn get(&self, item: &ContentId) -> Option<Arc<ItemComments>> {
        self.state().items.get(item).cloned()
    }

    /// Call before the query whose result goes to [`ListCache::fill`].
    pub fn generation(&self) -> u64 {
        self.state().generation
    }

    /// Caches `comments` (every comment on `item`, read after `generation` was taken), unless a
    /// write may have changed the item since.
    pub fn fill(&self, item: ContentId, comments: Arc<ItemComments>, generation: u64) {
        if comments.len() > MAX_COMMENTS_PER_ITEM {
            return;
        }
        let mut state = self.state();
        if state.generation != generation || state.items.contains_key(&item) {
            return;
        }
        state.bytes += size_of(&comments);
        state.items.insert(item, comments);
        if state.bytes > BUDGET_BYTES {
            state.start_over();
        }
    }

    /// The writer committed these comments (in id order).
    pub fn committed(&self, created: &[Comment]) {
        if created.is_empty() {
            return;
        }
        let mut state = self.state();
        for comment in created {
            let Some(cached) = state.items.get(&comment.content_id).cloned() else {
                // Not cached: a fill in flight may have missed this comment.
                state.generation += 1;
                continue;
            };
            if cached.last().is_some_and(|last| last.id >= comment.id) {
                continue;
            }
            if cached.len() >= MAX_COMMENTS_PER_ITEM {
                state.forget(&comment.content_id);
                continue;
            }
            let mut grown = Vec::with_capacity(cached.len() + 1);
            grown.extend(cached.iter().cloned());
            grown.push(comment.clone());
            state.bytes += size_of(std::slice::from_ref(comment));
            state
                .items
                .insert(comment.content_id.clone(), Arc::new(grown.into()));
        }
        if state.bytes > BUDGET_BYTES {
            state.start_over();
        }
    }

    /// The writer deleted a comment on `item`.
    pub fn deleted(&self, item: &ContentId) {
        self.state().forget(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CommentId;

    fn comment(id: i64, item: &str) -> Comment {
        Comment {
            id: CommentId::from_stored(id),
            content_id: ContentId::parse(item).unwrap(),
            email: "c@example.com".into(),
            comment: format!("comment {id}"),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn ids(list: &[Comment]) -> Vec<i64> {
        list.iter().map(|c| c.id.get()).collect()
    }

    fn item(name: &str) -> ContentId {
        ContentId::parse(name).unwrap()
    }

    #[test]
    fn commits_append_to_cached_items() {
        let cache = ListCache::default();
        let generation = cache.generation();
        cache.fill(
            item("a"),
            Arc::new(vec![comment(1, "a")].into()),
            generation,
        );
        cache.committed(&[comment(2, "a"), comment(3, "b")]);
        assert_eq!(ids(&cache.get(&item("a")).unwrap()), [1, 2]);
        assert!(
            cache.get(&item("b")).is_none(),
            "uncached items stay uncached"
        );
    }

    #[test]
    fn a_fill_read_before_a_commit_to_an_uncached_item_is_dropped() {
        let cache = ListCache::default();
        let generation = cache.generation();
        // The reader's query ran, then the writer committed comment 2 and updated the cache.
        cache.committed(&[comment(2, "a")]);
        cache.fill(
            item("a"),
            Arc::new(vec![comment(1, "a")].into()),
            generation,
        );
        assert!(cache.get(&item("a")).is_none(), "a stale list was cached");
    }

    #[test]
    fn a_fill_that_already_saw_a_commit_is_not_appended_twice() {
        let cache = ListCache::default();
        let generation = cache.generation();
        // The commit landed before the reader's query, and the fill lands before the writer's
        // cache update.
        cache.fill(
            item("a"),
            Arc::new(vec![comment(1, "a"), comment(2, "a")].into()),
            generation,
        );
        cache.committed(&[comment(2, "a")]);
        assert_eq!(ids(&cache.get(&item("a")).unwrap()), [1, 2]);
    }

    #[test]
    fn deletes_forget_the_item_and_stop_racing_fills() {
        let cache = ListCache::default();
        let generation = cache.generation();
        cache.fill(
            item("a"),
            Arc::new(vec![comment(1, "a")].into()),
            generation,
        );
        let before_delete = cache.generation();
        cache.deleted(&item("a"));
        assert!(cache.get(&item("a")).is_none());
        cache.fill(
            item("a"),
            Arc::new(vec![comment(1, "a")].into()),
            before_delete,
        );
        assert!(cache.get(&item("a")).is_none());
    }

    #[test]
    fn long_items_are_not_cached() {
        let cache = ListCache::default();
        let many: Vec<_> = (1..=MAX_COMMENTS_PER_ITEM as i64 + 1)
            .map(|id| comment(id, "a"))
            .collect();
        cache.fill(item("a"), Arc::new(many.into()), cache.generation());
        assert!(cache.get(&item("a")).is_none());
        let full: Vec<_> = (1..=MAX_COMMENTS_PER_ITEM as i64)
            .map(|id| comment(id, "b"))
            .collect();
        cache.fill(item("b"), Arc::new(full.into()), cache.generation());
        cache.committed(&[comment(5000, "b")]);
        assert!(cache.get(&item("b")).is_none(), "grown past the cap");
    }
}
